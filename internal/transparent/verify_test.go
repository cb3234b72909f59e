package transparent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

type fakeAnswers map[string]netip.Addr // client/name -> address

func (f fakeAnswers) Answered(client netip.Addr, name string, addr netip.Addr) bool {
	a, ok := f[client.String()+"/"+name]
	return ok && a == addr
}

func TestVerifier(t *testing.T) {
	agent := netip.MustParseAddr("10.0.0.1")
	v := &Verifier{
		Answers:  fakeAnswers{"10.0.0.1/guarded.test": netip.MustParseAddr("10.213.0.6")},
		Resolver: fakeResolver{"allowed.test": {netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}},
	}
	tests := []struct {
		name     string
		client   netip.Addr
		host     string
		dst      string
		mismatch string // substring of the refusal; "" when allowed
	}{
		{"answered by the guard", agent, "guarded.test", "10.213.0.6", ""},
		{"resolved by the proxy", agent, "allowed.test", "192.0.2.7", ""},
		{"resolved, IPv6", agent, "allowed.test", "2001:db8::7", ""},
		{"resolved, IPv4-mapped destination", agent, "allowed.test", "::ffff:192.0.2.7", ""},
		{"another address", agent, "allowed.test", "192.0.2.66", "not an address of allowed.test (it resolves to 192.0.2.7, 2001:db8::7)"},
		{"the guard answered another client", netip.MustParseAddr("10.0.0.2"), "guarded.test", "10.213.0.6", "does not resolve here"},
		{"unknown name", agent, "nowhere.test", "192.0.2.7", "does not resolve here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.Check(context.Background(), tt.client, tt.host, netip.MustParseAddr(tt.dst))
			if tt.mismatch == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrSNIMismatch) || !strings.Contains(err.Error(), tt.mismatch) {
				t.Fatalf("err = %v, want sni_mismatch with %q", err, tt.mismatch)
			}
		})
	}
}
