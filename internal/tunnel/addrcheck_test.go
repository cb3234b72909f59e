package tunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// mapResolver resolves the names of a map; the tests' names all point at loopback addresses.
type mapResolver map[string]string

func (m mapResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return []netip.Addr{netip.MustParseAddr(a)}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestBrokerAddressRulesHoldForNames: the broker's cidr deny rules, its private-address refusal and
// its allow-by-cidr rules apply to the addresses a name resolves to at the provider, with the reason
// the broker gives for that address itself.
func TestBrokerAddressRulesHoldForNames(t *testing.T) {
	target := echoServer(t) // 127.0.0.1:port
	// public.test resolves to a public address, which the provider must never dial here: its dialer
	// refuses everything but loopback and records what it was asked for.
	names := mapResolver{"denied.test": "127.0.0.2", "fine.test": "127.0.0.1", "public.test": "8.8.8.8",
		"dns64.test": "64:ff9b::808:808", "meta.test": "2a01:4f8:64::a9fe:a9fe"}
	tests := []struct {
		name, policy, host string
		allow              bool
		reason             string
	}{
		{"cidr deny holds for a name", "mode: discovery\ndeny:\n  - cidr: 127.0.0.2/32\nallow:\n  - cidr: 127.0.0.0/8\n",
			"denied.test", false, "127.0.0.2 is denied by rule deny#1 (cidr 127.0.0.2/32, broker.yaml line 3)"},
		{"a name outside the deny rule passes", "mode: discovery\ndeny:\n  - cidr: 127.0.0.2/32\nallow:\n  - cidr: 127.0.0.0/8\n",
			"fine.test", true, ""},
		{"private address refused for a name", "mode: discovery\n",
			"fine.test", false, "fine.test resolves to 127.0.0.1, a loopback address"},
		{"enforce: a name admitted by an allow cidr rule", "mode: enforce\nallow:\n  - cidr: 127.0.0.0/8\n",
			"fine.test", true, ""},
		{"enforce: a name outside every allow cidr rule", "mode: enforce\nallow:\n  - cidr: 127.0.0.0/8\n",
			"public.test", false, "no allow rule matches public.test"},
		// A DNS64 answer carries the denied IPv4 address: the deny rule holds through it.
		{"cidr deny holds for a DNS64 answer", "mode: discovery\ndeny:\n  - cidr: 8.8.8.0/24\n",
			"dns64.test", false, "64:ff9b::808:808 (NAT64 for 8.8.8.8) is denied by rule deny#1"},
		// The broker's own NAT64 prefix travels in the check: metadata behind it is refused.
		{"metadata behind the broker's NAT64 prefix", "mode: discovery\nnat64_prefixes: [\"2a01:4f8:64::/96\"]\n",
			"meta.test", false, "meta.test resolves to 2a01:4f8:64::a9fe:a9fe, a NAT64 address that carries 169.254.169.254, a cloud metadata address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol, err := policy.Parse("broker.yaml", []byte(tt.policy))
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, true, Config{})
			e.broker.Policy = func() *policy.Policy { return pol }
			var outside []string
			var mu sync.Mutex
			e.provider("s1", "any", func(p *Provider) {
				d := p.Dialer.(dial.Deciding).Dialer.(*dial.Direct)
				d.Resolver = names
				d.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
					if !netip.MustParseAddrPort(addr).Addr().IsLoopback() {
						mu.Lock()
						outside = append(outside, addr)
						mu.Unlock()
						return nil, errors.New("test dialer: not loopback")
					}
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				}
			}).waitConnected(t)
			defer func() {
				mu.Lock()
				defer mu.Unlock()
				if len(outside) > 0 {
					t.Errorf("the provider tried to dial %v", outside)
				}
			}()
			tgt := policy.Target{Host: tt.host, Port: target.Port}
			r := req("s1", tgt)
			r.Decision = pol.Decide(tgt, nil)
			if !r.Decision.Allow {
				t.Fatalf("name stage refused %s: %s", tt.host, r.Decision.Reason)
			}
			c, err := e.broker.Dial(context.Background(), r)
			if tt.allow {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				c.Write([]byte("ping"))
				buf := make([]byte, 4)
				if _, err := c.Read(buf); err != nil || string(buf) != "ping" {
					t.Fatalf("echo: %q, %v", buf, err)
				}
				c.Close()
				return
			}
			var de *dial.Error
			if !errors.As(err, &de) || de.Kind != dial.KindDenied || de.Decision == nil || !strings.Contains(de.Reason, tt.reason) {
				t.Fatalf("Dial: %v; want a denial with %q", err, tt.reason)
			}
			// The broker's reason is the one its own policy gives that address.
			if want := pol.Decide(tgt, []netip.Addr{netip.MustParseAddr(names[tt.host])}); de.Reason != want.Reason {
				t.Fatalf("reason %q, want the broker policy's %q", de.Reason, want.Reason)
			}
		})
	}
}

func TestAddrCheckRoundTrip(t *testing.T) {
	c := addrCheck{nat64: []netip.Prefix{netip.MustParsePrefix("2a01:4f8:64::/96")}, deny: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, rest: true}
	got, err := parseCheck(c.String())
	if err != nil || got.String() != c.String() || c.String() != "check=~2a01:4f8:64::/96,-203.0.113.0/24,+10.1.0.0/16,*" {
		t.Fatalf("%s round-trips as %s, %v", c, got, err)
	}
	for addr, want := range map[string]bool{"203.0.113.10": false, "10.1.2.3": true, "10.2.0.1": false, "169.254.169.254": false, "8.8.8.8": true, "::ffff:203.0.113.9": false,
		"64:ff9b::cb00:710a": false, "2002:cb00:710a::1": false, "2a01:4f8:64::cb00:710a": false, // 203.0.113.10 carried
		"2a01:4f8:64::a9fe:a9fe": false, "2a01:4f8:64::808:808": true, "64:ff9b::a01:203": false} {
		if c.allows(netip.MustParseAddr(addr)) != want {
			t.Errorf("allows(%s) = %v, want %v", addr, !want, want)
		}
	}
	for _, bad := range []string{"check", "check=x", "check=+1.2.3.4/8", "check=+10.0.0.0/8,-1.0.0.0/8", "check=-::/129",
		"check=-1.0.0.0/8,~2a01:4f8:64::/96", "check=~10.0.0.0/8", "check=~2a01:4f8:64::/95"} {
		if _, err := parseCheck(bad); err == nil {
			t.Errorf("parseCheck(%q) accepted", bad)
		}
	}
}
