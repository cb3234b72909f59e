package firewall

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// CaptureChain is the iptables/ip6tables chain in the nat table, jumped to from OUTPUT, that
// redirects the agent's connections for transparent capture; in nftables it is the chain capture of
// Table.
const CaptureChain = "SWARM-PROXY-CAPTURE"

// Capture is transparent capture: the agent's TCP is redirected to the proxy's transparent listener
// and (with DNSPort) its DNS to the DNS guard, both listening in the agent's network namespace.
type Capture struct {
	ProxyPort uint16 // port of --transparent-listen
	DNSPort   uint16 // port of --dns-listen; 0 leaves DNS alone
	// Route gives the agent's users routes with loopback's MTU (see RouteTable); only Apply
	// installs them, as they are ip(8) commands, not rules.
	Route bool
}

// validateCapture reports the problems of the capture part of c.
func (c Config) validateCapture() []error {
	if c.Capture == nil {
		return nil
	}
	var errs []error
	if c.Capture.ProxyPort == 0 {
		errs = append(errs, errors.New("firewall: --transparent needs --proxy-port, the port of the proxy's --transparent-listen"))
	}
	if len(c.AllowUIDs) == 0 {
		errs = append(errs, errors.New("firewall: --transparent needs --allow-uid UID, the proxy's user, or its own connections would be redirected back to it"))
	}
	return errs
}

// captureAccepts are the filter rules that let redirected connections reach the listeners. A
// redirected packet keeps its original output device in nftables, so "oifname lo" does not match
// it: the rules match conntrack's DNAT status and the listener's port instead.
func (c Config) captureAccepts() []rule {
	if c.Capture == nil {
		return nil
	}
	p := c.Capture.ProxyPort
	rs := []rule{{0, fmt.Sprintf("-p tcp --dport %d -m conntrack --ctstate DNAT", p), fmt.Sprintf("ct status dnat tcp dport %d", p),
		"accept", fmt.Sprintf("TCP redirected to the transparent listener on port %d", p)}}
	if d := c.Capture.DNSPort; d != 0 {
		for _, proto := range []string{"udp", "tcp"} {
			rs = append(rs, rule{0, fmt.Sprintf("-p %s --dport %d -m conntrack --ctstate DNAT", proto, d), fmt.Sprintf("ct status dnat %s dport %d", proto, d),
				"accept", fmt.Sprintf("DNS over %s redirected to the DNS guard on port %d", proto, d)})
		}
	}
	return rs
}

// natRule is one rule of the capture chain: "return" (not redirected) or "redirect" to port.
type natRule struct {
	iptables, nftables string
	verdict            string
	port               uint16
	comment            string
}

// captureRules are the capture chain's rules, the same for IPv4 and IPv6.
func (c Config) captureRules() []natRule {
	var rs []natRule
	for _, uid := range c.AllowUIDs {
		rs = append(rs, natRule{fmt.Sprintf("-m owner --uid-owner %d", uid), fmt.Sprintf("meta skuid %d", uid), "return", 0,
			fmt.Sprintf("uid %d (--allow-uid: the proxy) is not redirected, so it does not loop", uid)})
	}
	// DNS comes before loopback: a resolver on loopback (Docker's 127.0.0.11, systemd-resolved's
	// 127.0.0.53) would otherwise answer the agent without the guard.
	if d := c.Capture.DNSPort; d != 0 {
		for _, proto := range []string{"udp", "tcp"} {
			rs = append(rs, natRule{fmt.Sprintf("-p %s --dport 53", proto), fmt.Sprintf("%s dport 53", proto), "redirect", d,
				fmt.Sprintf("DNS over %s to the DNS guard, loopback resolvers included", proto)})
		}
	}
	rs = append(rs, natRule{"-o lo", `oifname "lo"`, "return", 0, "loopback stays local: the agent's own services and the proxy's listeners"})
	return append(rs, natRule{"-p tcp", "meta l4proto tcp", "redirect", c.Capture.ProxyPort,
		"every other TCP connection goes to the transparent listener"})
}

// captureRestore is the nat table's part of the iptables-restore input: it declares (and so
// flushes) CaptureChain and fills it.
func (c Config) captureRestore() string {
	if c.Capture == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("*nat\n:" + CaptureChain + " - [0:0]\n")
	for _, r := range c.captureRules() {
		fmt.Fprintf(&b, "-A %s %s -m comment --comment %q -j ", CaptureChain, r.iptables, r.comment)
		if r.verdict == "return" {
			b.WriteString("RETURN\n")
		} else {
			fmt.Fprintf(&b, "REDIRECT --to-ports %d\n", r.port)
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// captureJumpScript is the shell line that makes nat OUTPUT jump to CaptureChain once.
func (c Config) captureJumpScript(cmd string) string {
	if c.Capture == nil {
		return ""
	}
	return fmt.Sprintf("%s -t nat -C OUTPUT -j %s 2>/dev/null || %s -t nat -I OUTPUT 1 -j %s\n", cmd, CaptureChain, cmd, CaptureChain)
}

// applyCaptureJump makes nat OUTPUT jump to CaptureChain once and adds what it did to report.
func (c Config) applyCaptureJump(ctx context.Context, run Runner, cmd string, report []string) ([]string, error) {
	if c.Capture == nil {
		return report, nil
	}
	report = append(report, fmt.Sprintf("%s: replaced chain %s in table nat (%d rules)", cmd, CaptureChain, len(c.captureRules())))
	if _, err := run(ctx, "", cmd, "-t", "nat", "-C", "OUTPUT", "-j", CaptureChain); err == nil {
		return append(report, fmt.Sprintf("%s: nat OUTPUT already jumps to %s", cmd, CaptureChain)), nil
	}
	if out, err := run(ctx, "", cmd, "-t", "nat", "-I", "OUTPUT", "1", "-j", CaptureChain); err != nil {
		return report, fmt.Errorf("firewall: %s -t nat -I OUTPUT: %w: %s", cmd, err, strings.TrimSpace(out))
	}
	return append(report, fmt.Sprintf("%s: inserted a jump to %s at the top of nat OUTPUT", cmd, CaptureChain)), nil
}

// writeNFTCapture writes the capture chain of Table.
func (c Config) writeNFTCapture(b *strings.Builder) {
	if c.Capture == nil {
		return
	}
	b.WriteString("\tchain capture {\n\t\ttype nat hook output priority -100; policy accept;\n")
	for _, r := range c.captureRules() {
		verdict := "return"
		if r.verdict == "redirect" {
			verdict = fmt.Sprintf("redirect to :%d", r.port)
		}
		fmt.Fprintf(b, "\t\t%s %s comment %q\n", r.nftables, verdict, r.comment)
	}
	b.WriteString("\t}\n")
}

// captureHeader says in the script's header what is redirected.
func (c Config) captureHeader() string {
	if c.Capture == nil {
		return ""
	}
	s := fmt.Sprintf("# Transparent capture: TCP is redirected to port %d", c.Capture.ProxyPort)
	if c.Capture.DNSPort != 0 {
		s += fmt.Sprintf(", DNS (UDP and TCP 53) to port %d", c.Capture.DNSPort)
	}
	return s + " of this namespace, except loopback and the --allow-uid users.\n"
}
