package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// TestTransportDialRefusesUndecided: the Transport's dial goes through the pipeline's Dialer with
// the request's decision, so a request that reaches it undecided or denied is refused, and it dials
// only the decided target.
func TestTransportDialRefusesUndecided(t *testing.T) {
	tp := startProxy(t, "mode: discovery\n", nil, nil)
	tgt := policy.Target{Host: "x.example", Port: 80}
	for _, d := range []*dial.Request{nil, {Target: tgt}, {Target: tgt, Decision: policy.Decision{Code: policy.CodeDeniedByRule, Reason: "denied"}}} {
		st := &forwardState{req: &Request{Target: tgt, dial: d}}
		_, err := tp.srv.dialForTransport(context.WithValue(context.Background(), forwardKey{}, st), "tcp", "x.example:80")
		var de *dial.Error
		if err == nil || d != nil && (!errors.As(err, &de) || de.Kind != dial.KindDenied) {
			t.Fatalf("request %+v: %v, want a refusal", d, err)
		}
	}
	st := &forwardState{req: &Request{Target: tgt, dial: &dial.Request{Target: tgt, Decision: policy.Decision{Allow: true}}}}
	if _, err := tp.srv.dialForTransport(context.WithValue(context.Background(), forwardKey{}, st), "tcp", "other.example:80"); err == nil {
		t.Fatal("dialed a target other than the decided one")
	}
	if d := tp.dialer.Dialed(); len(d) != 0 {
		t.Fatalf("dialed %v", d)
	}
}

// TestTargetCannotSpeakForTheProxy: X-Swarm-Proxy-* headers from a target are removed, so what a
// client reads under those names comes from swarm-proxy (issue 14, item 7).
func TestTargetCannotSpeakForTheProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderDecision, "deny; code=denied_by_rule")
		w.Header().Set(HeaderError, "timeout")
		w.Header().Set(HeaderRequestID, "forged")
		w.Header().Set("X-Other", "kept")
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Other") != "kept" {
		t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
	}
	for _, h := range []string{HeaderDecision, HeaderError, HeaderRequestID} {
		if v, ok := resp.Header[h]; ok {
			t.Errorf("%s: %q passed on from the target", h, v)
		}
	}
}

// TestUnsupportedSchemes: every scheme but http and https gets a 400 naming it, ws included.
func TestUnsupportedSchemes(t *testing.T) {
	tp := startProxy(t, "mode: discovery\n", nil, nil)
	for _, scheme := range []string{"ws", "wss", "ftp", "gopher"} {
		c, br := dialProxy(t, tp.addr)
		resp, body := roundTrip(t, c, br, fmt.Sprintf("GET %s://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", scheme))
		if resp.StatusCode != 400 || !strings.Contains(body, fmt.Sprintf("scheme %q is not supported", scheme)) {
			t.Fatalf("%s: %d %q", scheme, resp.StatusCode, body)
		}
		if rec := lastRecord(t, tp); rec.Error != accesslog.ErrorBadRequest {
			t.Fatalf("%s: record %+v", scheme, rec)
		}
	}
	if d := tp.dialer.Dialed(); len(d) != 0 {
		t.Fatalf("dialed %v", d)
	}
}

// TestServeConn: a connection handed over by another front end is served by the same server and
// handler: its origin-form requests go to the connection's target, decided and logged like any
// other, and a request whose Host names another host is refused without a dial.
func TestServeConn(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s host=%s", r.Method, r.RequestURI, r.Host)
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	tgt, err := policy.ParseTarget(upAddr, 0)
	if err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	client, server := net.Pipe()
	defer client.Close()
	info := ConnInfo{Client: netip.MustParseAddrPort("10.1.2.3:4567"), Target: tgt, Scheme: "http", Via: "transparent", TunnelID: "t1"}
	if err := tp.srv.ServeConn(server, info); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(client)
	resp, body := roundTrip(t, client, br, "GET /a%2Fb?q=1 HTTP/1.1\r\nHost: "+upAddr+"\r\n\r\n")
	if want := "GET /a%2Fb?q=1 host=" + upAddr; resp.StatusCode != 200 || body != want {
		t.Fatalf("%d %q, want %q", resp.StatusCode, body, want)
	}
	rec := lastRecord(t, tp)
	if rec.Client != "10.1.2.3" || rec.Path != "/a%2Fb" || rec.Upstream != upAddr || rec.Status != 200 {
		t.Fatalf("record %+v", rec)
	}
	dialed := len(tp.dialer.Dialed())
	resp, body = roundTrip(t, client, br, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
	if resp.StatusCode != 400 || !strings.Contains(body, "not "+upAddr) {
		t.Fatalf("a Host other than the target: %d %q", resp.StatusCode, body)
	}
	if d := tp.dialer.Dialed(); len(d) != dialed {
		t.Fatalf("dialed %v for a refused request", d[dialed:])
	}
}

// TestRequestHooks: CheckRequest refuses by path before anything is dialed, Mutate changes the
// outgoing copy (the target sees the header) or refuses the request with its Failure, and
// ModifyResponse sees the response.
func TestRequestHooks(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "auth=%s", r.Header.Get("Authorization"))
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr}, func(s *Server) {
		s.CheckRequest = func(r *http.Request, req *Request) *Failure {
			if strings.HasPrefix(req.Path, "/admin") {
				return &Failure{Status: http.StatusForbidden, Kind: accesslog.ErrorDeniedByRule, Denied: true, Rule: "paths#1", Reason: "path /admin is denied"}
			}
			return nil
		}
		s.Mutate = func(out *http.Request, req *Request) *Failure {
			if req.Path == "/broken" {
				return &Failure{Status: http.StatusForbidden, Kind: "secret_unavailable", Denied: true, Reason: "no credential for this rule"}
			}
			out.Header.Set("Authorization", "Bearer injected")
			return nil
		}
		s.ModifyResponse = func(resp *http.Response, req *Request) error {
			resp.Header.Set("X-Checked", req.Path)
			return nil
		}
	})
	get := func(path string) (*http.Response, string) {
		c, br := dialProxy(t, tp.addr)
		return roundTrip(t, c, br, fmt.Sprintf("GET http://%s%s HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, path, upAddr))
	}
	if resp, body := get("/admin/x"); resp.StatusCode != 403 || !strings.Contains(resp.Header.Get(HeaderDecision), "rule=paths#1") {
		t.Fatalf("/admin: %d %q", resp.StatusCode, body)
	}
	if d := tp.dialer.Dialed(); len(d) != 0 {
		t.Fatalf("dialed %v for a refused path", d)
	}
	if resp, body := get("/ok"); resp.StatusCode != 200 || body != "auth=Bearer injected" || resp.Header.Get("X-Checked") != "/ok" {
		t.Fatalf("/ok: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body := get("/broken"); resp.StatusCode != 403 || !strings.Contains(body, "no credential for this rule") {
		t.Fatalf("/broken: %d %q", resp.StatusCode, body)
	}
	if rec := lastRecord(t, tp); rec.Error != "secret_unavailable" || rec.Decision != "deny" {
		t.Fatalf("record %+v", rec)
	}
}

// TestFailureBody: the text a client reads names what happened once, with or without a target.
func TestFailureBody(t *testing.T) {
	tgt := policy.Target{Host: "a.test", Port: 80}
	for _, tc := range []struct {
		f      *Failure
		target policy.Target
		first  string
	}{
		{BadRequest("no host"), policy.Target{}, "swarm-proxy rejected a malformed request\n"},
		{BadRequest("bad port"), tgt, "swarm-proxy rejected a malformed request for a.test:80\n"},
		{ClientNotAllowed("10.0.0.1"), tgt, "swarm-proxy blocked a.test:80\n"},
		{ShuttingDown(), tgt, "swarm-proxy could not reach a.test:80\n"},
		{ClientNotAllowed("10.0.0.1"), policy.Target{}, "swarm-proxy refused the request\n"},
	} {
		body := tc.f.Body(&Request{ID: "r1", Target: tc.target})
		if !strings.HasPrefix(body, tc.first) || !strings.Contains(body, "reason: "+tc.f.Reason+"\n") || !strings.HasSuffix(body, "request id: r1\n") {
			t.Errorf("%+v: body %q, want it to start %q", tc.f, body, tc.first)
		}
	}
}
