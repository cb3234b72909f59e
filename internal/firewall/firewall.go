// Package firewall renders and applies the egress rules for an agent's network namespace: replies to
// allowed connections, loopback, the proxy and (when asked) DNS are allowed; everything else, IPv4
// and IPv6, is rejected. The rules live in a chain (iptables) or table (nftables) of their own, so
// applying them again replaces them atomically instead of adding duplicates.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Names of what the rules create.
const (
	// Chain is the iptables/ip6tables chain in the filter table, jumped to from OUTPUT.
	Chain = "SWARM-PROXY-EGRESS"
	// Table is the nftables table (family inet) with one output chain.
	Table = "swarm_proxy_egress"
)

// Format is a rule syntax.
type Format string

// Rule syntaxes.
const (
	FormatIPTables Format = "iptables"
	FormatNFTables Format = "nftables"
)

// Config is what the agent may reach.
type Config struct {
	// Proxy lists every address and port of the proxy the agent may reach (a name may resolve to
	// several addresses; the HTTP and SOCKS5 listeners are two ports); at least one.
	Proxy []netip.AddrPort
	// Names maps a proxy address to the name the user gave for it, for comments; optional.
	Names map[netip.Addr]string
	// DNS lists DNS servers the agent may query on port 53 (UDP and TCP); empty allows none.
	DNS []netip.Addr
	// AllowUIDs lists users whose processes may connect anywhere: the proxy's own user when it
	// shares the agent's namespace (a Kubernetes sidecar listening on 127.0.0.1).
	AllowUIDs []uint32
	// Capture, when set, redirects the agent's connections to the proxy in its namespace
	// (transparent capture); Proxy may then be empty.
	Capture *Capture
	// AdminPorts are loopback TCP ports that only the AllowUIDs may reach: the proxy's admin
	// endpoint (/metrics, /healthz) when the proxy shares the agent's namespace. Ignored without
	// AllowUIDs, where the agent's loopback is its own.
	AdminPorts []uint16
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Proxy) == 0 && c.Capture == nil {
		errs = append(errs, errors.New("firewall: no proxy address"))
	}
	for _, ap := range c.Proxy {
		if !ap.IsValid() || ap.Port() == 0 {
			errs = append(errs, fmt.Errorf("firewall: proxy address %v: want IP:PORT with a non-zero port", ap))
		}
	}
	for _, a := range c.DNS {
		if !a.IsValid() {
			errs = append(errs, errors.New("firewall: invalid DNS server address"))
		}
	}
	for _, name := range c.Names {
		if strings.ContainsAny(name, "\"\\\n") || len(name) > 64 {
			errs = append(errs, fmt.Errorf("firewall: proxy name %q: want a host name of at most 64 characters", name))
		}
	}
	errs = append(errs, c.validateCapture()...)
	errs = append(errs, c.validateRoute()...)
	return errors.Join(errs...)
}

// family is an IP version, 4 or 6; 0 in a rule means both.
type family int

// rule is one filter rule in both syntaxes.
type rule struct {
	family   family
	iptables string // the match part of an iptables rule (without -A CHAIN and -j)
	nftables string // the match part of an nftables rule (without the verdict)
	verdict  string // "accept", "reset" or "reject"
	comment  string
}

// rules returns every rule in order; iptables takes those of its family, nftables all of them.
func (c Config) rules() []rule {
	rs := []rule{
		{0, "-m conntrack --ctstate ESTABLISHED,RELATED", "ct state established,related", "accept", "replies to connections already allowed"},
	}
	rs = append(rs, c.ndRules()...)
	rs = append(rs, c.captureAccepts()...)
	for _, uid := range c.AllowUIDs {
		rs = append(rs, rule{0, fmt.Sprintf("-m owner --uid-owner %d", uid), fmt.Sprintf("meta skuid %d", uid),
			"accept", fmt.Sprintf("processes of uid %d (--allow-uid: the proxy in this namespace)", uid)})
	}
	rs = append(rs, c.adminRules()...)
	rs = append(rs, rule{0, "-o lo", `oifname "lo"`, "accept", "loopback: the agent's own local services"})
	for _, ap := range c.Proxy {
		f := familyOf(ap.Addr())
		name := ""
		if n := c.Names[ap.Addr()]; n != "" && n != ap.Addr().String() {
			name = " (" + n + ")"
		}
		rs = append(rs, rule{f,
			fmt.Sprintf("-d %s -p tcp --dport %d", ap.Addr(), ap.Port()),
			fmt.Sprintf("%s daddr %s tcp dport %d", nftFamily(f), ap.Addr(), ap.Port()),
			"accept", fmt.Sprintf("the swarm-proxy at %s%s", ap, name),
		})
	}
	for _, a := range c.DNS {
		f := familyOf(a)
		for _, proto := range []string{"udp", "tcp"} {
			rs = append(rs, rule{f,
				fmt.Sprintf("-d %s -p %s --dport 53", a, proto),
				fmt.Sprintf("%s daddr %s %s dport 53", nftFamily(f), a, proto),
				"accept", fmt.Sprintf("DNS server %s over %s (--dns)", a, proto),
			})
		}
	}
	return append(rs,
		rule{0, "-p tcp", "meta l4proto tcp", "reset", "any other TCP: refused at once so tools fail fast, not hang"},
		rule{0, "", "", "reject", "anything else: the agent goes out only through the proxy"},
	)
}

// IPv6 neighbour discovery destinations: a solicitation goes to the target's solicited-node
// multicast group, or to its address when a cached entry is re-checked; an advertisement answers
// the soliciting address, or goes to all nodes when unsolicited.
var (
	ndLinkLocal     = netip.MustParsePrefix("fe80::/10")
	ndSolicitedNode = netip.MustParsePrefix("ff02::1:ff00:0/104")
	ndAllNodes      = netip.MustParsePrefix("ff02::1/128")
)

// ndRules let IPv6 neighbour discovery work and nothing else through it: only neighbour
// solicitations and advertisements, with hop limit 255 (which every receiver requires and no router
// forwards unchanged), to link-local, solicited-node or all-nodes addresses, or to the proxy's own
// IPv6 addresses (a neighbour). A process with CAP_NET_RAW can write any ICMPv6 packet: a rule that
// accepted every neighbour solicitation let it carry data to any address.
func (c Config) ndRules() []rule {
	type nd struct {
		ipt, nft, what string
		dsts           []netip.Prefix
	}
	var neighbours []netip.Prefix
	for _, ap := range c.Proxy {
		if a := ap.Addr(); familyOf(a) == 6 && !slices.Contains(neighbours, netip.PrefixFrom(a, 128)) {
			neighbours = append(neighbours, netip.PrefixFrom(a, 128))
		}
	}
	var rs []rule
	for _, t := range []nd{
		{"neighbour-solicitation", "nd-neighbor-solicit", "neighbour solicitation", append([]netip.Prefix{ndSolicitedNode, ndLinkLocal}, neighbours...)},
		{"neighbour-advertisement", "nd-neighbor-advert", "neighbour advertisement", append([]netip.Prefix{ndAllNodes, ndLinkLocal}, neighbours...)},
	} {
		for _, d := range t.dsts {
			rs = append(rs, rule{6,
				fmt.Sprintf("-d %s -p ipv6-icmp --icmpv6-type %s -m hl --hl-eq 255", d, t.ipt),
				fmt.Sprintf("ip6 daddr %s ip6 hoplimit 255 icmpv6 type %s", d, t.nft),
				"accept", fmt.Sprintf("IPv6 %s to %s, hop limit 255 (neighbour discovery only)", t.what, d)})
		}
	}
	return rs
}

// adminRules keep the proxy's admin port on loopback out of the agent's reach when the proxy shares
// its namespace: the AllowUIDs were accepted before, so these match the agent only.
func (c Config) adminRules() []rule {
	if len(c.AllowUIDs) == 0 {
		return nil
	}
	var rs []rule
	for _, p := range c.AdminPorts {
		rs = append(rs, rule{0, fmt.Sprintf("-o lo -p tcp --dport %d", p), fmt.Sprintf(`oifname "lo" tcp dport %d`, p),
			"reset", fmt.Sprintf("the proxy's admin port %d on loopback: only --allow-uid users (--admin-port)", p)})
	}
	return rs
}

// rulesFor returns the rules that apply to family f.
func (c Config) rulesFor(f family) []rule {
	var rs []rule
	for _, r := range c.rules() {
		if r.family == 0 || r.family == f {
			rs = append(rs, r)
		}
	}
	return rs
}

func familyOf(a netip.Addr) family {
	if a.Unmap().Is4() {
		return 4
	}
	return 6
}

func nftFamily(f family) string {
	if f == 4 {
		return "ip"
	}
	return "ip6"
}

// IPTablesRestore is the iptables-restore --noflush input for one family (4 or 6): it declares (and
// so flushes) Chain and fills it.
func (c Config) IPTablesRestore(f int) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + Chain + " - [0:0]\n")
	for _, r := range c.rulesFor(family(f)) {
		b.WriteString("-A " + Chain)
		if r.iptables != "" {
			b.WriteString(" " + r.iptables)
		}
		fmt.Fprintf(&b, " -m comment --comment %q -j ", r.comment)
		switch {
		case r.verdict == "accept":
			b.WriteString("ACCEPT")
		case r.verdict == "reset":
			b.WriteString("REJECT --reject-with tcp-reset")
		case f == 4:
			b.WriteString("REJECT --reject-with icmp-admin-prohibited")
		default:
			b.WriteString("REJECT --reject-with icmp6-adm-prohibited")
		}
		b.WriteString("\n")
	}
	b.WriteString("COMMIT\n")
	b.WriteString(c.captureRestore())
	return b.String()
}

// IPTablesScript is a shell script that applies the rules with iptables and ip6tables.
func (c Config) IPTablesScript() string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	c.header(&b)
	fmt.Fprintf(&b, "# Running it again is harmless: the chain %s is replaced atomically and OUTPUT jumps to it once.\nset -e\n", Chain)
	for _, f := range []int{4, 6} {
		cmd := iptablesCmd(f)
		fmt.Fprintf(&b, "%s-restore --noflush <<'EOF'\n%sEOF\n", cmd, c.IPTablesRestore(f))
		fmt.Fprintf(&b, "%s -C OUTPUT -j %s 2>/dev/null || %s -I OUTPUT 1 -j %s\n", cmd, Chain, cmd, Chain)
		b.WriteString(c.captureJumpScript(cmd))
	}
	return b.String()
}

func iptablesCmd(f int) string {
	if f == 4 {
		return "iptables"
	}
	return "ip6tables"
}

// NFTables is an nft -f script that replaces Table in one transaction.
func (c Config) NFTables() string {
	var b strings.Builder
	b.WriteString("#!/usr/sbin/nft -f\n")
	c.header(&b)
	fmt.Fprintf(&b, "# Running it again is harmless: the table %s is deleted and recreated in one transaction.\n", Table)
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n", Table, Table, Table)
	b.WriteString("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n")
	for _, r := range c.rules() {
		b.WriteString("\t\t" + nftRule(r))
	}
	b.WriteString("\t}\n")
	c.writeNFTCapture(&b)
	b.WriteString("}\n")
	return b.String()
}

func nftRule(r rule) string {
	verdict := map[string]string{"accept": "accept", "reset": "reject with tcp reset", "reject": "reject with icmpx type admin-prohibited"}[r.verdict]
	match := r.nftables
	if match != "" {
		match += " "
	}
	return fmt.Sprintf("%s%s comment %q\n", match, verdict, r.comment)
}

func (c Config) header(b *strings.Builder) {
	fmt.Fprintf(b, "# swarm-proxy firewall: egress rules for the agent's network namespace or container.\n")
	b.WriteString("# Allowed: replies, loopback")
	if len(c.Proxy) > 0 {
		fmt.Fprintf(b, ", the proxy at %s", joinAddrPorts(c.Proxy))
	}
	if len(c.DNS) > 0 {
		fmt.Fprintf(b, ", DNS at %s", joinAddrs(c.DNS))
	}
	for _, uid := range c.AllowUIDs {
		fmt.Fprintf(b, ", anything from uid %d", uid)
	}
	b.WriteString(". Everything else, IPv4 and IPv6, is rejected.\n")
	b.WriteString(c.captureHeader())
}

func joinAddrPorts(aps []netip.AddrPort) string {
	s := make([]string, len(aps))
	for i, ap := range aps {
		s[i] = ap.String()
	}
	return strings.Join(s, " ")
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// Render writes the rules in format f.
func Render(w io.Writer, f Format, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.Capture != nil && c.Capture.Route {
		return errors.New("firewall: --capture-route runs ip(8) rule and route commands, which no rule script holds: use it with --apply, or run the commands docs/agents.md shows")
	}
	var s string
	switch f {
	case FormatIPTables:
		s = c.IPTablesScript()
	case FormatNFTables:
		s = c.NFTables()
	default:
		return fmt.Errorf("firewall: unknown format %q (want iptables or nftables)", f)
	}
	_, err := io.WriteString(w, s)
	return err
}

// Runner runs a command with stdin and returns its combined output; nil in Apply means exec.
type Runner func(ctx context.Context, stdin string, name string, args ...string) (string, error)

// ExecRunner runs commands as processes in the current network namespace.
func ExecRunner(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Apply installs the rules in the current network namespace with the tools of format f and returns
// one line per action taken.
func Apply(ctx context.Context, f Format, c Config, run Runner) ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if run == nil {
		run = ExecRunner
	}
	var report []string
	switch f {
	case FormatIPTables:
		for _, fam := range []int{4, 6} {
			cmd := iptablesCmd(fam)
			if out, err := run(ctx, c.IPTablesRestore(fam), cmd+"-restore", "--noflush"); err != nil {
				return report, fmt.Errorf("firewall: %s-restore: %w: %s", cmd, err, strings.TrimSpace(out))
			}
			report = append(report, fmt.Sprintf("%s: replaced chain %s in table filter (%d rules)", cmd, Chain, len(c.rulesFor(family(fam)))))
			if _, err := run(ctx, "", cmd, "-C", "OUTPUT", "-j", Chain); err == nil {
				report = append(report, fmt.Sprintf("%s: OUTPUT already jumps to %s", cmd, Chain))
			} else if out, err := run(ctx, "", cmd, "-I", "OUTPUT", "1", "-j", Chain); err != nil {
				return report, fmt.Errorf("firewall: %s -I OUTPUT: %w: %s", cmd, err, strings.TrimSpace(out))
			} else {
				report = append(report, fmt.Sprintf("%s: inserted a jump to %s at the top of OUTPUT", cmd, Chain))
			}
			var err error
			if report, err = c.applyCaptureJump(ctx, run, cmd, report); err != nil {
				return report, err
			}
		}
	case FormatNFTables:
		script := c.NFTables()
		if out, err := run(ctx, script, "nft", "-f", "-"); err != nil {
			return nil, fmt.Errorf("firewall: nft -f: %w: %s", err, strings.TrimSpace(out))
		}
		report = append(report, fmt.Sprintf("nftables: replaced table inet %s (%d rules in chain output, hook output)", Table, len(c.rules())))
		if c.Capture != nil {
			report = append(report, fmt.Sprintf("nftables: chain capture of table inet %s redirects (%d rules, nat hook output)", Table, len(c.captureRules())))
		}
	default:
		return nil, fmt.Errorf("firewall: unknown format %q (want iptables or nftables)", f)
	}
	return c.applyRoute(ctx, run, report)
}

// ParseProxy splits HOST:PORT, for the --proxy flag; the host still needs resolving.
func ParseProxy(s string) (host string, port uint16, err error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("firewall: --proxy %q: want HOST:PORT", s)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(s[:i], "["), "]")
	p, err := strconv.ParseUint(s[i+1:], 10, 16)
	if err != nil || p == 0 || host == "" {
		return "", 0, fmt.Errorf("firewall: --proxy %q: want HOST:PORT with a port from 1 to 65535", s)
	}
	return host, uint16(p), nil
}
