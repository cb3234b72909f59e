package dial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// rebindingResolver answers a public address first and loopback afterwards, as a DNS-rebinding
// attacker would.
type rebindingResolver struct {
	mu    sync.Mutex
	calls int
}

func (r *rebindingResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.calls == 1 {
		return []netip.Addr{netip.MustParseAddr("93.184.215.14")}, nil
	}
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

type staticResolver []string

func (s staticResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

// recorder is a DialContext that records addresses and connects nowhere.
type recorder struct {
	mu    sync.Mutex
	addrs []string
	err   error
}

func (r *recorder) DialContext(_ context.Context, _, addr string) (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs = append(r.addrs, addr)
	if r.err != nil {
		return nil, r.err
	}
	c1, c2 := net.Pipe()
	c2.Close()
	return c1, nil
}

func target(host string, port int) *Request {
	return &Request{Target: policy.Target{Host: host, Port: port}}
}

// TestResolveOnceDialChecked: the address that is dialed is the one that was checked, from a single
// lookup, so a rebinding answer on a second lookup cannot be used.
func TestResolveOnceDialChecked(t *testing.T) {
	res := &rebindingResolver{}
	rec := &recorder{}
	d := Deciding{Policy: policy.Default, Dialer: &Direct{Policy: policy.Default, Resolver: res, DialContext: rec.DialContext}}
	req := target("rebind.example", 443)
	c, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if res.calls != 1 || len(rec.addrs) != 1 || rec.addrs[0] != "93.184.215.14:443" {
		t.Fatalf("lookups %d, dialed %v; want one lookup and 93.184.215.14:443", res.calls, rec.addrs)
	}
	if req.Decision.Code != policy.CodeDiscovery {
		t.Errorf("decision %+v not recorded on the request", req.Decision)
	}
}

func TestDirectRefusals(t *testing.T) {
	enforce, err := policy.Parse("p.yaml", []byte("mode: enforce\nallow:\n  - host: ok.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		pol      *policy.Policy
		resolver Resolver
		req      *Request
		lookups  bool
	}{
		{"enforce refuses before resolving", enforce, staticResolver{"192.0.2.1"}, target("other.example", 443), false},
		{"private answer refused", policy.Default(), staticResolver{"10.1.2.3", "fe80::1"}, target("x.example", 80), true},
		{"metadata literal", policy.Default(), staticResolver{}, target("169.254.169.254", 80), false},
		// IPv6 forms that carry a loopback or metadata IPv4 address, as literals and as AAAA answers.
		{"NAT64 loopback literal", policy.Default(), staticResolver{}, target("64:ff9b::7f00:1", 80), false},
		{"NAT64 metadata literal", policy.Default(), staticResolver{}, target("64:ff9b::a9fe:a9fe", 80), false},
		{"6to4 loopback literal", policy.Default(), staticResolver{}, target("2002:7f00:1::1", 80), false},
		{"6to4 metadata literal", policy.Default(), staticResolver{}, target("2002:a9fe:a9fe::1", 80), false},
		{"IPv4-compatible loopback literal", policy.Default(), staticResolver{}, target("::7f00:1", 80), false},
		{"IPv4-translated loopback literal", policy.Default(), staticResolver{}, target("::ffff:0:7f00:1", 80), false},
		{"site-local literal", policy.Default(), staticResolver{}, target("fec0::1", 80), false},
		{"AAAA answer NAT64 metadata", policy.Default(), staticResolver{"64:ff9b::a9fe:a9fe"}, target("aaaa.example", 80), true},
		{"AAAA answer Teredo private", policy.Default(), staticResolver{"2001:0:4136:e378:8000:63bf:f5ff:fffe"}, target("teredo.example", 80), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			pol := func() *policy.Policy { return tt.pol }
			d := Deciding{Policy: pol, Dialer: &Direct{Policy: pol, Resolver: tt.resolver, DialContext: rec.DialContext}}
			_, err := d.Dial(context.Background(), tt.req)
			var de *Error
			if !errors.As(err, &de) || de.Kind != KindDenied || de.Decision == nil {
				t.Fatalf("err = %v, want a denial", err)
			}
			if len(rec.addrs) != 0 {
				t.Fatalf("dialed %v", rec.addrs)
			}
		})
	}
}

// TestDirectRefusesUndecided: the direct dialer refuses a request whose decision is not an allow
// (none made, a denial, a denial with the policy allowing everything) without a lookup or a dial.
func TestDirectRefusesUndecided(t *testing.T) {
	for _, d := range []policy.Decision{{}, {Code: policy.CodeDeniedByRule, Reason: "denied by rule deny#1"}} {
		res, rec := &rebindingResolver{}, &recorder{}
		dd := &Direct{Policy: policy.Default, Resolver: res, DialContext: rec.DialContext}
		req := target("x.example", 443)
		req.Decision = d
		_, err := dd.Dial(context.Background(), req)
		var de *Error
		if !errors.As(err, &de) || de.Kind != KindDenied || de.Decision == nil || de.Decision.Code == "" {
			t.Fatalf("decision %+v: %v, want a refusal with a code", d, err)
		}
		if res.calls != 0 || len(rec.addrs) != 0 {
			t.Fatalf("decision %+v: %d lookups, dialed %v", d, res.calls, rec.addrs)
		}
	}
}

func TestClassify(t *testing.T) {
	tgt := policy.Target{Host: "x.example", Port: 80}
	tests := []struct {
		err  error
		kind Kind
	}{
		{&net.DNSError{Err: "no such host", IsNotFound: true}, KindResolve},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), KindTimeout},
		{&net.OpError{Op: "dial", Err: errors.New("connect: connection refused")}, KindUnreachable},
		{fmt.Errorf("wrapped: %w", &Error{Kind: KindNoProvider}), KindNoProvider},
	}
	for _, tt := range tests {
		if got := Classify(tgt, tt.err); got.Kind != tt.kind {
			t.Errorf("Classify(%v) = %v, want %v", tt.err, got.Kind, tt.kind)
		}
	}
}

// TestDialsNextCheckedAddress: when the first checked address fails, the next one is tried.
func TestDialsNextCheckedAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port // nothing listens on 127.0.0.2 at this port: refused
	pol, _ := policy.Parse("p.yaml", []byte("mode: discovery\nallow:\n  - cidr: 127.0.0.0/8\n"))
	req := target("two.example", port)
	req.Decision = pol.Decide(req.Target, nil)
	d := &Direct{Policy: func() *policy.Policy { return pol }, Resolver: staticResolver{"127.0.0.2", "127.0.0.1"}, Timeout: 5 * time.Second}
	c, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.RemoteAddr().String(); got != ln.Addr().String() {
		t.Fatalf("connected to %s, want %s", got, ln.Addr())
	}
}

// machine is an injected list of this machine's own addresses.
type machine []string

func (m machine) Owns(a netip.Addr) bool {
	for _, s := range m {
		if netip.MustParseAddr(s) == a {
			return true
		}
	}
	return false
}

// TestOwnAddressesRefused: an address of the dialing machine is refused like loopback, as a literal
// and as a name's answer, unless an allow cidr rule covers it; nothing is dialed when refused.
func TestOwnAddressesRefused(t *testing.T) {
	own := machine{"192.31.196.1", "2001:4:112::1"}
	allowed, err := policy.Parse("p.yaml", []byte("mode: discovery\nallow:\n  - cidr: 192.31.196.1/32\n    ports: [9393]\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		pol      *policy.Policy
		resolver Resolver
		req      *Request
		dial     string // "" when refused
	}{
		{"own IPv4 literal", policy.Default(), staticResolver{}, target("192.31.196.1", 9393), ""},
		{"own IPv6 literal", policy.Default(), staticResolver{}, target("2001:4:112::1", 9393), ""},
		{"name answering an own address", policy.Default(), staticResolver{"2001:4:112::1"}, target("me.example", 9393), ""},
		{"name answering own and other: only the other", policy.Default(), staticResolver{"192.31.196.1", "93.184.215.14"}, target("two.example", 443), "93.184.215.14:443"},
		{"covered by an allow cidr rule", allowed, staticResolver{}, target("192.31.196.1", 9393), "192.31.196.1:9393"},
		{"another machine's address", policy.Default(), staticResolver{}, target("192.31.196.2", 9393), "192.31.196.2:9393"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			pol := func() *policy.Policy { return tt.pol }
			d := Deciding{Policy: pol, Dialer: &Direct{Policy: pol, Resolver: tt.resolver, DialContext: rec.DialContext, Machine: own}}
			c, err := d.Dial(context.Background(), tt.req)
			if tt.dial == "" {
				var de *Error
				if !errors.As(err, &de) || de.Kind != KindDenied || !strings.Contains(de.Reason, "an address of this machine") {
					t.Fatalf("err = %v, want a denial naming an address of this machine", err)
				}
				if len(rec.addrs) != 0 {
					t.Fatalf("dialed %v", rec.addrs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if len(rec.addrs) != 1 || rec.addrs[0] != tt.dial {
				t.Fatalf("dialed %v, want %s", rec.addrs, tt.dial)
			}
		})
	}
}

// TestDirectPin: a pinned address (a captured connection's original destination) is the only one
// dialed, without a lookup, and it is still checked against the policy.
func TestDirectPin(t *testing.T) {
	res := &rebindingResolver{}
	for _, tc := range []struct {
		pin    string
		denied bool
	}{{"93.184.215.99", false}, {"127.0.0.1", true}, {"::ffff:10.0.0.1", true}} {
		t.Run(tc.pin, func(t *testing.T) {
			rec := &recorder{}
			d := Deciding{Policy: policy.Default, Dialer: &Direct{Policy: policy.Default, Resolver: res, DialContext: rec.DialContext}}
			req := target("pinned.example", 443)
			req.Pin = netip.MustParseAddr(tc.pin)
			c, err := d.Dial(context.Background(), req)
			if tc.denied {
				var de *Error
				if !errors.As(err, &de) || de.Kind != KindDenied || len(rec.addrs) != 0 {
					t.Fatalf("err = %v, dialed %v; want a denial and no dial", err, rec.addrs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if len(rec.addrs) != 1 || rec.addrs[0] != tc.pin+":443" {
				t.Fatalf("dialed %v, want only the pinned %s:443", rec.addrs, tc.pin)
			}
		})
	}
	if res.calls != 0 {
		t.Errorf("%d lookups for pinned requests, want none", res.calls)
	}
}
