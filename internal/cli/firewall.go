package cli

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/firewall"
)

func newFirewallCmd() *cobra.Command {
	var (
		proxies   []string
		dns       []string
		allowUIDs []uint
		format    string
		apply     bool
		capture   bool
		route     bool
		proxyPort uint16
		dnsPort   uint16
		adminPort uint16
	)
	cmd := &cobra.Command{
		Use:   "firewall --proxy HOST:PORT [--proxy HOST:PORT] | --transparent --proxy-port N [--dns-port N] --allow-uid UID",
		Short: "Print (or --apply) egress rules that let the agent's namespace reach only the proxy",
		Long: `Print the firewall rules for the agent's network namespace or container: replies to allowed
connections, loopback, the proxy and (with --dns) DNS are allowed; everything else, IPv4 and IPv6, is
rejected, TCP with a reset so tools fail fast. Each rule has a comment.

The rules live in their own iptables chain (` + firewall.Chain + `, jumped to from OUTPUT) or nftables table
(inet ` + firewall.Table + `), so --apply, or running the printed script, again replaces them atomically.
A proxy given by name is resolved now; the rules hold its addresses.

With --transparent the proxy runs in the agent's namespace (a sidecar sharing it) and the rules
redirect the agent's TCP to its --transparent-listen port (--proxy-port) and, with --dns-port, its
DNS (UDP and TCP 53) to its --dns-listen port, IPv4 and IPv6, in a nat chain (` + firewall.CaptureChain + `,
or the chain capture of the nftables table). Loopback and the users of --allow-uid (the proxy's own
user, required so that its connections are not redirected back to it) are not redirected.
A redirected connection keeps the segment size of the route its client dialed (MTU 1500, against
loopback's 65536 for the explicit proxy); --capture-route (with --apply) gives the agent's users a
routing table of their own whose default route has loopback's MTU, which nothing of theirs leaves by.

With --allow-uid (the proxy shares the agent's namespace), the proxy's admin port on loopback
(--admin-port, 9090 by default: its /metrics and /healthz) is refused to everyone but those users.

IPv6 neighbour discovery is allowed only as neighbour solicitations and advertisements with hop
limit 255 to link-local, solicited-node, all-nodes or the proxy's addresses. The rules see what
goes through the IP stack: a process with CAP_NET_RAW can still write raw frames (AF_PACKET) past
them, so run the agent without it (see docs/agents.md; "swarm-proxy doctor" checks).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(proxies) == 0 && !capture {
				return fmt.Errorf("firewall: --proxy HOST:PORT is required (or --transparent)")
			}
			if !capture && (proxyPort != 0 || dnsPort != 0 || route) {
				return fmt.Errorf("firewall: --proxy-port, --dns-port and --capture-route go with --transparent")
			}
			cfg := firewall.Config{Names: map[netip.Addr]string{}}
			if adminPort != 0 {
				cfg.AdminPorts = []uint16{adminPort}
			}
			if capture {
				cfg.Capture = &firewall.Capture{ProxyPort: proxyPort, DNSPort: dnsPort, Route: route}
			}
			for _, p := range proxies {
				host, port, err := firewall.ParseProxy(proxyHostPort(p))
				if err != nil {
					return err
				}
				addrs, err := net.DefaultResolver.LookupNetIP(cmd.Context(), "ip", host)
				if err != nil {
					return fmt.Errorf("firewall: resolve proxy %s: %w", host, err)
				}
				for _, a := range addrs {
					ap := netip.AddrPortFrom(a.Unmap(), port)
					if !slices.Contains(cfg.Proxy, ap) {
						cfg.Proxy = append(cfg.Proxy, ap)
					}
					if _, named := cfg.Names[ap.Addr()]; !named {
						cfg.Names[ap.Addr()] = host
					}
				}
			}
			for _, d := range dns {
				a, err := netip.ParseAddr(d)
				if err != nil {
					return fmt.Errorf("firewall: --dns %q: want an IP address: %w", d, err)
				}
				cfg.DNS = append(cfg.DNS, a)
			}
			for _, uid := range allowUIDs {
				if uid > 1<<32-1 {
					return fmt.Errorf("firewall: --allow-uid %d: not a user id", uid)
				}
				cfg.AllowUIDs = append(cfg.AllowUIDs, uint32(uid))
			}
			if !apply {
				return firewall.Render(cmd.OutOrStdout(), firewall.Format(format), cfg)
			}
			report, err := firewall.Apply(cmd.Context(), firewall.Format(format), cfg, nil)
			for _, line := range report {
				fmt.Fprintln(cmd.OutOrStdout(), line)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&proxies, "proxy", nil, "the proxy the agent may reach, HOST:PORT or http://HOST:PORT (required; repeat it, or separate with commas, for the SOCKS5 port too)")
	f.StringSliceVar(&dns, "dns", nil, "DNS server addresses the agent may query on port 53 (default: none)")
	f.UintSliceVar(&allowUIDs, "allow-uid", nil, "user ids whose processes may connect anywhere: the proxy's own user when it shares the agent's namespace (e.g. a Kubernetes sidecar on 127.0.0.1)")
	f.Uint16Var(&adminPort, "admin-port", 9090, "with --allow-uid: the proxy's --admin-listen port on loopback, refused to everyone but the --allow-uid users (0: reachable)")
	f.BoolVar(&capture, "transparent", false, "redirect the agent's TCP (and DNS with --dns-port) to the proxy in this namespace: transparent capture")
	f.Uint16Var(&proxyPort, "proxy-port", 0, "with --transparent: the port of the proxy's --transparent-listen")
	f.Uint16Var(&dnsPort, "dns-port", 0, "with --transparent: the port of the proxy's --dns-listen; DNS is redirected there")
	f.BoolVar(&route, "capture-route", false, "with --transparent --apply: route the agent's users (all but --allow-uid) by a table of their own with loopback's MTU, so captured connections are as fast as explicit ones (ip rule and ip route; see docs/agents.md)")
	f.StringVar(&format, "format", string(firewall.FormatIPTables), "rule syntax: iptables or nftables")
	f.BoolVar(&apply, "apply", false, "apply the rules in the current network namespace (needs CAP_NET_ADMIN) and report what was done")
	return cmd
}
