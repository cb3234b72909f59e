package connectclient

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/dnsguard"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// TestUpstream: a sidecar's dialer opens allowed connections through a broker (swarm-proxy's own
// front end with an authenticator stands in for it) with the session's credentials; an undecided
// request never reaches it; the broker's refusals come back as denials with their reasons.
func TestUpstream(t *testing.T) {
	broker := startProxy(t, fixedAuth{})
	echo := loopbacktest.Start(t, func(c net.Conn) { defer c.Close(); io.Copy(c, c) })
	target := policy.Target{Host: "127.0.0.1", Port: echo.Addr().(*net.TCPAddr).Port}
	allowed := func(t policy.Target) *dial.Request {
		return &dial.Request{Target: t, Decision: policy.Decision{Allow: true, Code: policy.CodeDiscovery}}
	}

	up := Upstream{D: &Dialer{Proxy: broker, User: "s1", Password: "tok"}}
	c, err := up.Dial(context.Background(), allowed(target))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("through the broker"))
	buf := make([]byte, len("through the broker"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "through the broker" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.Close()

	tests := []struct {
		name   string
		up     Upstream
		req    *dial.Request
		kind   dial.Kind
		code   string
		reason string
	}{
		{"undecided request", Upstream{D: &Dialer{Proxy: closedAddr(t)}}, &dial.Request{Target: target}, dial.KindDenied, "no_rule_matched", "no policy decision"},
		{"wrong ticket", Upstream{D: &Dialer{Proxy: broker, User: "s1", Password: "bad"}}, allowed(target), dial.KindDenied, accesslog.ErrorAuth, "token is not valid"},
		{"the broker's policy refuses", up, allowed(policy.Target{Host: "10.9.9.9", Port: 443}), dial.KindDenied, "denied_by_rule", "the broker refused"},
		{"broker down", Upstream{D: &Dialer{Proxy: closedAddr(t)}}, allowed(target), dial.KindUnreachable, "", "the broker cannot be reached"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.up.Dial(context.Background(), tt.req)
			var de *dial.Error
			if !errors.As(err, &de) || de.Kind != tt.kind || !strings.Contains(de.Error(), tt.reason) {
				t.Fatalf("err = %v, want kind %v with %q", err, tt.kind, tt.reason)
			}
			if tt.code != "" && (de.Decision == nil || string(de.Decision.Code) != tt.code) {
				t.Errorf("decision %+v, want code %s", de.Decision, tt.code)
			}
		})
	}
}

// TestUpstreamDNS: the DNS guard of a sidecar in broker mode asks its upstream resolver over TCP
// through the broker.
func TestUpstreamDNS(t *testing.T) {
	broker := startProxy(t, fixedAuth{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 127.0.0.9")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })

	up := Upstream{D: &Dialer{Proxy: broker, User: "s1", Password: "tok"}}
	exchange := dnsguard.TCPExchange(up.DialAddr)
	resp, err := exchange(context.Background(), new(dns.Msg).SetQuestion("name.test.", dns.TypeA), "udp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != netip.MustParseAddr("127.0.0.9").String() {
		t.Fatalf("answer %v", resp.Answer)
	}
}
