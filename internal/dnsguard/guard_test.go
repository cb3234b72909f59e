package dnsguard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// zone is the test upstream's data: name -> records in presentation format.
var zone = map[string][]string{
	"allowed.test.":     {"allowed.test. 60 IN A 192.0.2.7", "allowed.test. 60 IN AAAA 2001:db8::7"},
	"www.allowed.test.": {"www.allowed.test. 60 IN CNAME cdn.elsewhere.test.", "cdn.elsewhere.test. 30 IN A 192.0.2.9"},
	"denied.test.":      {"denied.test. 60 IN A 192.0.2.66"},
	"db.internal.":      {"db.internal. 60 IN A 10.20.1.1", "db.internal. 60 IN A 192.0.2.1"},
	"public.internal.":  {"public.internal. 60 IN A 192.0.2.1"},
	"big.allowed.test.": nil, // filled in init: more than fits in 512 bytes
	"txt.allowed.test.": {`txt.allowed.test. 60 IN TXT "v=spf1 -all"`},
}

func init() {
	for i := range 40 {
		zone["big.allowed.test."] = append(zone["big.allowed.test."], fmt.Sprintf("big.allowed.test. 60 IN A 192.0.2.%d", i+1))
	}
}

// upstream is a loopback DNS server answering from zone; it counts the names it was asked.
type upstream struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func (u *upstream) asked(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Contains(u.seen, name)
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		u.mu.Lock()
		u.seen = append(u.seen, strings.ToLower(q.Name))
		u.mu.Unlock()
		m := new(dns.Msg).SetReply(r)
		recs, ok := zone[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, s := range recs {
			rr, err := dns.NewRR(s)
			if err != nil {
				panic(err)
			}
			if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(m)
	})
	pc, ln := listenPair(t)
	u.addr = pc.LocalAddr().String()
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { defer close(done); s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { s.Shutdown(); <-done })
	}
	return u
}

type guardFixture struct {
	addr  string
	log   *bytes.Buffer
	logMu *sync.Mutex
	cache *Cache
	up    *upstream
}

// syncBuffer is a log sink that the test can read while the guard writes.
type syncBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (s syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func startGuard(t *testing.T, policyYAML string, upstreams ...string) *guardFixture {
	t.Helper()
	p, err := policy.Parse("policy.yaml", []byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	f := &guardFixture{log: &bytes.Buffer{}, logMu: &sync.Mutex{}, cache: NewCache(0)}
	if upstreams == nil {
		f.up = startUpstream(t)
		upstreams = []string{f.up.addr}
	}
	g := &Guard{Policy: func() *policy.Policy { return p }, Upstreams: upstreams, Cache: f.cache, Timeout: 2 * time.Second,
		Log: accesslog.NewWriter(syncBuffer{f.logMu, f.log})}
	pc, ln := listenPair(t)
	f.addr = pc.LocalAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, pc, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

// records returns the DNS records logged so far.
func (f *guardFixture) records(t *testing.T) []accesslog.DNSRecord {
	t.Helper()
	f.logMu.Lock()
	defer f.logMu.Unlock()
	var out []accesslog.DNSRecord
	for _, line := range strings.Split(strings.TrimSpace(f.log.String()), "\n") {
		if line == "" {
			continue
		}
		var r accesslog.DNSRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func (f *guardFixture) query(t *testing.T, network, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(4096, false)
	}
	resp, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, f.addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.Type(qtype), network, err)
	}
	return resp
}

const enforcePolicy = `mode: enforce
allow:
  - host: "*.allowed.test"
  - host: allowed.test
  - cidr: 10.20.0.0/16
    ports: [5432]
deny:
  - host: denied.test
`

func addrsOf(m *dns.Msg) []string {
	var out []string
	for _, a := range answerAddrs(m) {
		out = append(out, a.String())
	}
	return out
}

func TestGuard(t *testing.T) {
	f := startGuard(t, enforcePolicy)
	long := strings.Repeat("x", 60) + ".allowed.test"
	tests := []struct {
		name         string
		network      string
		qname        string
		qtype        uint16
		rcode        int
		answers      []string
		decision     string
		rule, errStr string
		flagged      bool
		upstreamSeen bool // whether the upstream resolver may be asked at all
	}{
		{"allowed A", "udp", "allowed.test", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.7"}, "allow", "allow#2", "", false, true},
		{"allowed AAAA over TCP", "tcp", "allowed.test", dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:db8::7"}, "allow", "allow#2", "", false, true},
		{"CNAME chain of an allowed name", "udp", "www.allowed.test", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.9"}, "allow", "allow#1", "", false, true},
		{"TXT under a named zone", "udp", "txt.allowed.test", dns.TypeTXT, dns.RcodeSuccess, nil, "allow", "allow#1", "", false, true},
		{"denied name never reaches the upstream", "udp", "denied.test", dns.TypeA, dns.RcodeRefused, nil, "deny", "deny#1", "denied_by_rule", false, false},
		{"unknown name", "udp", "exfil.attacker.test", dns.TypeA, dns.RcodeRefused, nil, "deny", "", "no_rule_matched", false, true},
		{"60-character label under an allowed zone", "udp", long, dns.TypeA, dns.RcodeRefused, nil, "deny", "", "dns_suspicious", true, false},
		{"TXT under an unnamed name", "udp", "db.internal", dns.TypeTXT, dns.RcodeRefused, nil, "deny", "", "dns_suspicious", true, false},
		{"cidr rule keeps covered addresses", "udp", "db.internal", dns.TypeA, dns.RcodeSuccess, []string{"10.20.1.1"}, "allow", "allow#3", "", false, true},
		{"cidr rule covers none", "udp", "public.internal", dns.TypeA, dns.RcodeRefused, nil, "deny", "", "no_rule_matched", false, true},
		{"mixed case is the same name", "udp", "DeNied.TEST", dns.TypeA, dns.RcodeRefused, nil, "deny", "deny#1", "denied_by_rule", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.query(t, tt.network, tt.qname, tt.qtype, false)
			if resp.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
			}
			if got := addrsOf(resp); !slices.Equal(got, tt.answers) {
				t.Errorf("answers %v, want %v", got, tt.answers)
			}
			host, _ := policy.NormalizeHost(tt.qname)
			if !tt.upstreamSeen && f.up.asked(dns.Fqdn(host)) {
				t.Errorf("the upstream resolver was asked for %s", host)
			}
			var rec *accesslog.DNSRecord
			recs := f.records(t)
			for i := range recs {
				if recs[i].Host == host && recs[i].DNSType == dns.Type(tt.qtype).String() {
					rec = &recs[i]
				}
			}
			if rec == nil {
				t.Fatalf("no record for %s in:\n%v", host, recs)
			}
			answers := rec.Answers
			if len(answers) == 0 {
				answers = nil
			}
			if rec.Method != "DNS" || rec.Status != dns.RcodeToString[tt.rcode] || rec.Decision != tt.decision || rec.Rule != tt.rule ||
				rec.Error != tt.errStr || !slices.Equal(answers, tt.answers) || rec.Mode != "enforce" || rec.Client != "127.0.0.1" {
				t.Errorf("record %+v; want status %s decision %s rule %q error %q answers %v",
					*rec, dns.RcodeToString[tt.rcode], tt.decision, tt.rule, tt.errStr, tt.answers)
			}
			if flagged := slices.Contains(rec.Flags, "dns_suspicious"); flagged != tt.flagged {
				t.Errorf("flags %v, want flagged %v", rec.Flags, tt.flagged)
			}
			if rec.Decision == "deny" && rec.Reason == "" {
				t.Error("a refusal without a reason")
			}
		})
	}

	client := netip.MustParseAddr("127.0.0.1")
	if !f.cache.Answered(client, "allowed.test", netip.MustParseAddr("192.0.2.7")) ||
		!f.cache.Answered(client, "allowed.test", netip.MustParseAddr("2001:db8::7")) {
		t.Error("the cache lacks the addresses given for allowed.test")
	}
	if !f.cache.Answered(client, "www.allowed.test", netip.MustParseAddr("192.0.2.9")) {
		t.Error("the cache lacks the CNAME chain's address under the queried name")
	}
	if f.cache.Answered(client, "db.internal", netip.MustParseAddr("192.0.2.1")) {
		t.Error("the cache holds an address that was filtered out of the answer")
	}
	if f.cache.Answered(client, "denied.test", netip.MustParseAddr("192.0.2.66")) {
		t.Error("the cache holds a refused name")
	}
}

func TestGuardTruncation(t *testing.T) {
	f := startGuard(t, enforcePolicy)
	udp := f.query(t, "udp", "big.allowed.test", dns.TypeA, false)
	if !udp.Truncated {
		t.Errorf("a 40-address answer over UDP without EDNS0 is not truncated (%d answers)", len(udp.Answer))
	}
	for _, tc := range []struct {
		network string
		edns    bool
	}{{"tcp", false}, {"udp", true}} {
		if m := f.query(t, tc.network, "big.allowed.test", dns.TypeA, tc.edns); m.Truncated || len(m.Answer) != 40 {
			t.Errorf("%s (EDNS0 %v): truncated %v with %d answers, want all 40", tc.network, tc.edns, m.Truncated, len(m.Answer))
		}
	}
}

func TestGuardDiscovery(t *testing.T) {
	f := startGuard(t, "mode: discovery\ndeny:\n  - host: denied.test\n")
	long := strings.Repeat("x", 60) + ".allowed.test"
	if m := f.query(t, "udp", long, dns.TypeA, false); m.Rcode != dns.RcodeNameError {
		t.Errorf("discovery: flagged name got %s, want the upstream's NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	if m := f.query(t, "udp", "denied.test", dns.TypeA, false); m.Rcode != dns.RcodeRefused {
		t.Errorf("discovery: denied name got %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
	if m := f.query(t, "udp", "public.internal", dns.TypeA, false); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("discovery: got %s with %d answers, want the whole answer", dns.RcodeToString[m.Rcode], len(m.Answer))
	}
	recs := f.records(t)
	if len(recs) != 3 || !slices.Contains(recs[0].Flags, "dns_suspicious") || recs[0].Decision != "allow" || recs[0].Status != "NXDOMAIN" ||
		!strings.Contains(recs[0].Reason, "flagged") || recs[0].Mode != "discovery" {
		t.Errorf("records: %+v", recs)
	}
}

func TestGuardBadQueries(t *testing.T) {
	f := startGuard(t, enforcePolicy)
	chaos := new(dns.Msg).SetQuestion("version.bind.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	bad := new(dns.Msg).SetQuestion("a\\000b.allowed.test.", dns.TypeA)
	for name, m := range map[string]*dns.Msg{"chaos class": chaos, "binary label": bad} {
		resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, f.addr)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rcode != dns.RcodeRefused {
			t.Errorf("%s: %s, want REFUSED", name, dns.RcodeToString[resp.Rcode])
		}
	}
	if f.up.asked("version.bind.") {
		t.Error("a CHAOS query reached the upstream")
	}
	for _, r := range f.records(t) {
		if r.Decision != "deny" || (r.Error != ErrorBadQuery && r.Error != ErrorInvalidName) {
			t.Errorf("record %+v", r)
		}
	}
}

func TestGuardUpstreamDown(t *testing.T) {
	// A port with nothing behind it on loopback: UDP gets ICMP port unreachable at once.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()
	f := startGuard(t, enforcePolicy, dead)
	if m := f.query(t, "udp", "allowed.test", dns.TypeA, false); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("got %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	recs := f.records(t)
	if len(recs) != 1 || recs[0].Error != ErrorUpstream || recs[0].Status != "SERVFAIL" {
		t.Errorf("records %+v", recs)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := dir + "/resolv.conf"
		if err := writeFile(p, s); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := UpstreamsFromResolvConf(write("search example\nnameserver 10.0.0.53\nnameserver fd00::53\n"))
	if err != nil || !slices.Equal(got, []string{"10.0.0.53:53", "[fd00::53]:53"}) {
		t.Errorf("got %v, %v", got, err)
	}
	if _, err := UpstreamsFromResolvConf(write("search example\n")); err == nil {
		t.Error("a resolv.conf without nameserver gave no error")
	}
	if _, err := UpstreamsFromResolvConf(dir + "/missing"); err == nil {
		t.Error("a missing resolv.conf gave no error")
	}
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o644) }

// listenPair listens on one loopback port for UDP and TCP; a port free for UDP may be taken for
// TCP, so it tries a few.
func listenPair(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

// TestGuardConcurrent: clients querying at once over UDP and TCP each get their answer, and each
// query is one record (run with -race: the cache and the log are shared).
func TestGuardConcurrent(t *testing.T) {
	f := startGuard(t, enforcePolicy)
	const clients, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients*each)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			network := []string{"udp", "tcp"}[i%2]
			c := &dns.Client{Net: network, Timeout: 5 * time.Second}
			for j := range each {
				name := []string{"allowed.test.", "denied.test.", "www.allowed.test."}[j%3]
				resp, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), f.addr)
				switch {
				case err != nil:
					errs <- err
				case name == "denied.test." && resp.Rcode != dns.RcodeRefused, name != "denied.test." && len(resp.Answer) == 0:
					errs <- fmt.Errorf("%s over %s: %s with %d answers", name, network, dns.RcodeToString[resp.Rcode], len(resp.Answer))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(f.records(t)); n != clients*each {
		t.Errorf("%d records for %d queries", n, clients*each)
	}
}
