package e2e

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// Addresses of the machine in TestOwnAddressesRefused: globally reachable ranges (AS112), so that
// only the "address of this machine" rule can refuse them. They exist only on an interface inside
// the test's own network namespace, which has no route anywhere else.
const (
	ownIP4 = "192.31.196.1"
	ownIP6 = "2001:4:112::1"
)

// TestOwnAddressesRefused: an admin server bound to [::] answers on every address of the machine,
// not only on loopback. The proxy (HTTP, CONNECT, SOCKS5) and a provider with --allow-targets public
// refuse the machine's own non-loopback addresses with "an address of this machine", and a proxy
// whose policy has an allow cidr rule for the address reaches it (so the refusal is the rule, not a
// dead address). IPv6 forms that carry a loopback or metadata IPv4 address (NAT64, 6to4,
// IPv4-translated) and site-local addresses are refused too, as what they carry.
func TestOwnAddressesRefused(t *testing.T) {
	requireNetns(t)
	ns := fmt.Sprintf("spo-%x%x", os.Getpid()&0xfffff, nsCounter.Add(1))
	ipCmd(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { ipCmd(t, "ip", "netns", "del", ns) })
	for _, s := range [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", "own0", "type", "veth", "peer", "name", "own1"},
		{"ip", "-n", ns, "link", "set", "own0", "up"},
		{"ip", "-n", ns, "link", "set", "own1", "up"},
		{"ip", "-n", ns, "addr", "add", ownIP4 + "/24", "dev", "own0"},
		{"ip", "-n", ns, "addr", "add", ownIP6 + "/64", "dev", "own0", "nodad"},
	} {
		ipCmd(t, s...)
	}
	inNetns(t, ns, func() {
		px := StartProxy(t, "--admin-listen", "[::]:0", "--socks-listen", "127.0.0.1:0")
		_, adminPort, err := net.SplitHostPort(px.Admin)
		if err != nil {
			t.Fatalf("admin address %q: %v", px.Admin, err)
		}
		v4 := net.JoinHostPort(ownIP4, adminPort)
		v6 := net.JoinHostPort(ownIP6, adminPort)

		// With an allow cidr rule the address is reachable: the admin server answers there.
		open := StartProxy(t, "--policy", WriteFile(t, "open.yaml", "mode: discovery\nallow:\n  - cidr: "+ownIP4+"/32\n"))
		if r := Curl(t, "-f", "--proxy", "http://"+open.Addr, "http://"+v4+"/healthz"); r.Code != 0 {
			t.Fatalf("with an allow cidr rule: exit %d %s%s", r.Code, r.Stdout, r.Stderr)
		}

		for _, c := range []struct {
			name, host string
			args       []string
		}{
			{"HTTP", ownIP4, []string{"--proxy", "http://" + px.Addr, "http://" + v4 + "/healthz"}},
			{"HTTP IPv6", ownIP6, []string{"--proxy", "http://" + px.Addr, "http://" + "[" + ownIP6 + "]:" + adminPort + "/healthz"}},
			{"CONNECT", ownIP6, []string{"--proxy", "http://" + px.Addr, "--proxytunnel", "http://" + v6 + "/healthz"}},
			{"SOCKS5", ownIP4, []string{"--socks5", px.Field("socks"), "http://" + v4 + "/healthz"}},
		} {
			r := Curl(t, append([]string{"-i"}, c.args...)...)
			if r.Code == 0 && !strings.Contains(r.Stdout, "403") || strings.Contains(r.Stdout, "200 OK") {
				t.Errorf("%s: exit %d, want a refusal:\n%s%s", c.name, r.Code, r.Stdout, r.Stderr)
			}
			rec := px.WaitRecord(func(r accesslog.Record) bool {
				return r.Host == c.host && strings.Contains(r.Reason, "an address of this machine")
			})
			if rec.Decision != accesslog.DecisionDeny || rec.Error != "private_address" {
				t.Errorf("%s: record %+v, want a private_address denial", c.name, rec)
			}
			if c.name == "HTTP" && !strings.Contains(r.Stdout, ownIP4+" is an address of this machine") {
				t.Errorf("HTTP: the 403 does not give the reason:\n%s", r.Stdout)
			}
		}

		// IPv6 forms that carry a loopback or metadata IPv4 address are refused as what they carry
		// (in this namespace nothing routes them anywhere, should the check be wrong).
		for _, c := range []struct{ url, reason string }{
			{"http://[64:ff9b::7f00:1]:" + adminPort + "/healthz", "a NAT64 address that carries 127.0.0.1, a loopback address"},
			{"http://[2002:a9fe:a9fe::1]/latest/meta-data/", "a 6to4 address that carries 169.254.169.254, a cloud metadata address"},
			{"http://[::ffff:0:7f00:1]:" + adminPort + "/healthz", "an IPv4-translated address that carries 127.0.0.1"},
			{"http://[fec0::1]/", "a site-local (deprecated) address"},
		} {
			r := Curl(t, "-i", "--proxy", "http://"+px.Addr, c.url)
			if !strings.Contains(r.Stdout, "403") || !strings.Contains(r.Stdout, c.reason) {
				t.Errorf("%s: want a 403 saying %q:\n%s%s", c.url, c.reason, r.Stdout, r.Stderr)
			}
		}

		// A provider with --allow-targets public, in the same namespace, refuses them too.
		b := startBroker(t)
		_, tk := b.ticket("own-session", "1h")
		Start(t, "connected to broker", "provider", "--ticket", b.providerTicket("own-session", "1h"), "--broker", b.ProviderAddr, "--allow-targets", "public")
		// The broker's metrics are read with curl: this thread is the only one in the namespace.
		series := `swarm_proxy_tunnel_providers{session="own-session"} 1`
		Eventually(t, "the provider registered", func() bool {
			return strings.Contains(Curl(t, "http://"+b.Admin+"/metrics").Stdout, series)
		})
		r := Curl(t, "-i", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "http://"+v4+"/healthz")
		if !strings.Contains(r.Stdout, "403") || !strings.Contains(r.Stdout, "an address of this machine") {
			t.Errorf("provider --allow-targets public: exit %d, want a 403 naming an address of this machine:\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		r = Curl(t, "-i", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/")
		if !strings.Contains(r.Stdout, "403") || !strings.Contains(r.Stdout, "carries 169.254.169.254") {
			t.Errorf("provider --allow-targets public, NAT64 metadata: exit %d, want a 403:\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
	})
}
