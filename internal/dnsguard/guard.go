// Package dnsguard is the DNS guard: a DNS server (github.com/miekg/dns) for the agent's queries
// that answers under the proxy's policy. In enforce mode it answers names a host allow rule matches,
// answers other names only with the addresses an allow cidr rule covers, and refuses the rest;
// discovery mode answers everything; names a deny rule matches are refused in both. Queries that
// look like data tunnelled through DNS are flagged, and refused in enforce mode. Every query is one
// access record, and the addresses given to each client are remembered (Cache) so that the
// transparent listener can check that a connection goes where its name was resolved.
package dnsguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// DefaultTimeout bounds the upstream exchanges of one query when Guard.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Error values of a DNS record, beside the policy's decision codes.
const (
	ErrorSuspicious  = accesslog.ErrorDNSSuspicious
	ErrorBadQuery    = accesslog.ErrorDNSBadQuery
	ErrorInvalidName = accesslog.ErrorDNSInvalidName
	ErrorUpstream    = accesslog.ErrorDNSUpstream
)

// Exchanger sends a query to an upstream resolver over network ("udp" or "tcp").
type Exchanger func(ctx context.Context, m *dns.Msg, network, upstream string) (*dns.Msg, error)

// Guard answers DNS queries under a policy. Its exported fields are set before Serve.
type Guard struct {
	// Policy returns the policy in force; it is called once per query.
	Policy func() *policy.Policy
	// Upstreams are the resolvers (HOST:PORT) asked, in order, until one answers.
	Upstreams []string
	// Log receives one record per query; nil writes none.
	Log *accesslog.Writer
	// Cache remembers the addresses given to each client; nil remembers none.
	Cache *Cache
	// Timeout bounds the upstream exchanges of one query; zero means DefaultTimeout.
	Timeout time.Duration
	// Exchange asks an upstream; nil means a dns.Client over the query's own network, retried
	// over TCP when a UDP answer is truncated.
	Exchange Exchanger
}

// Serve answers queries on pc (UDP) and ln (TCP), either of which may be nil, until ctx ends or a
// server fails; it then stops both and returns the failure, or nil.
func (g *Guard) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	type running struct {
		srv           *dns.Server
		started, done chan struct{}
		err           error
	}
	var all []*running
	for _, s := range []*dns.Server{{PacketConn: pc}, {Listener: ln}} {
		if s.PacketConn != nil || s.Listener != nil {
			all = append(all, &running{srv: s, started: make(chan struct{}), done: make(chan struct{})})
		}
	}
	if len(all) == 0 {
		return errors.New("dns guard: nothing to serve on")
	}
	failed := make(chan *running, len(all))
	for _, r := range all {
		r.srv.Handler = g
		r.srv.NotifyStartedFunc = sync.OnceFunc(func() { close(r.started) })
		go func() {
			r.err = r.srv.ActivateAndServe()
			close(r.done)
			failed <- r
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case r := <-failed:
		err = fmt.Errorf("dns guard: %w", r.err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), g.timeout())
	defer cancel()
	for _, r := range all {
		select {
		case <-r.started:
			r.srv.ShutdownContext(sctx)
		case <-r.done:
		}
		<-r.done
	}
	return err
}

func (g *Guard) timeout() time.Duration {
	if g.Timeout > 0 {
		return g.Timeout
	}
	return DefaultTimeout
}

// ServeDNS answers one query and writes its record.
func (g *Guard) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	start := time.Now()
	client := addrOf(w.RemoteAddr())
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	rec := accesslog.DNSRecord{Timestamp: start.UTC(), Client: client.String(), Method: accesslog.MethodDNS}
	resp := g.answer(r, client, network, &rec)
	if network == "udp" {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = max(int(o.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	rec.Status = dns.RcodeToString[resp.Rcode]
	if rec.Status == "" {
		rec.Status = fmt.Sprintf("RCODE%d", resp.Rcode)
	}
	// The record is written before the answer, so that whoever got the answer finds the record.
	rec.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	if g.Log != nil {
		g.Log.WriteDNS(&rec)
	}
	w.WriteMsg(resp)
}

// answer decides q and returns the response to send; it fills rec.
func (g *Guard) answer(r *dns.Msg, client netip.Addr, network string, rec *accesslog.DNSRecord) *dns.Msg {
	p := g.Policy()
	rec.Mode = string(p.Mode)
	refuse := func(rcode int, errCode, reason string, d *policy.Decision) *dns.Msg {
		rec.Decision, rec.Error, rec.Reason = accesslog.DecisionDeny, errCode, reason
		if d != nil {
			rec.Rule = d.RuleID()
		}
		return new(dns.Msg).SetRcode(r, rcode)
	}
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return refuse(dns.RcodeNotImplemented, ErrorBadQuery, "only standard queries with one question are answered", nil)
	}
	q := r.Question[0]
	rec.Host, rec.DNSType = q.Name, dns.Type(q.Qtype).String()
	if q.Qclass != dns.ClassINET {
		return refuse(dns.RcodeRefused, ErrorBadQuery, fmt.Sprintf("class %s is not answered, only IN", dns.Class(q.Qclass)), nil)
	}
	name, err := policy.NormalizeHost(q.Name)
	if err != nil {
		return refuse(dns.RcodeRefused, ErrorInvalidName, err.Error(), nil)
	}
	rec.Host = name
	d := p.DecideName(name, nil)
	naming := p.NamingRule(name)
	exact := naming != nil && naming.List == "allow" && naming.Host == name
	why := suspicion(name, q.Qtype, naming != nil, exact)
	if why != "" {
		rec.Flags = []string{accesslog.FlagDNSSuspicious}
	}
	switch {
	case !d.Allow:
		return refuse(dns.RcodeRefused, string(d.Code), d.Reason, &d)
	case why != "" && p.Mode == policy.Enforce:
		return refuse(dns.RcodeRefused, ErrorSuspicious, "looks like data tunnelled through DNS: "+why, nil)
	}

	resp, err := g.forward(r, network)
	if err != nil {
		rec.Decision, rec.Rule, rec.Reason, rec.Error = accesslog.DecisionAllow, d.RuleID(), "no upstream resolver answered: "+err.Error(), ErrorUpstream
		return new(dns.Msg).SetRcode(r, dns.RcodeServerFailure)
	}
	resp.Id = r.Id
	if d.Pending {
		d = p.DecideName(name, answerAddrs(resp))
		if !d.Allow {
			return refuse(dns.RcodeRefused, string(d.Code), d.Reason, &d)
		}
		keepAddrs(resp, d.Addrs)
	}
	rec.Decision, rec.Rule, rec.Reason = accesslog.DecisionAllow, d.RuleID(), d.Reason
	if why != "" {
		rec.Reason += "; flagged: looks like data tunnelled through DNS: " + why
	}
	addrs := answerAddrs(resp)
	for _, a := range addrs {
		rec.Answers = append(rec.Answers, a.String())
	}
	g.Cache.Add(client, name, addrs, minTTL(resp))
	return resp
}

// forward asks the upstreams in order and returns the first answer.
func (g *Guard) forward(r *dns.Msg, network string) (*dns.Msg, error) {
	if len(g.Upstreams) == 0 {
		return nil, errors.New("no upstream resolver configured")
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout())
	defer cancel()
	exchange := g.Exchange
	if exchange == nil {
		exchange = clientExchange
	}
	q := r.Copy()
	q.Id = dns.Id()
	var errs []error
	for _, up := range g.Upstreams {
		resp, err := exchange(ctx, q, network, up)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// clientExchange asks upstream over network with a dns.Client, and again over TCP when a UDP answer
// comes back truncated.
func clientExchange(ctx context.Context, m *dns.Msg, network, upstream string) (*dns.Msg, error) {
	resp, _, err := (&dns.Client{Net: network}).ExchangeContext(ctx, m, upstream)
	if err == nil && resp.Truncated && network == "udp" {
		resp, _, err = (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, m, upstream)
	}
	return resp, err
}

// answerAddrs returns the addresses of the answer's A and AAAA records, never nil.
func answerAddrs(m *dns.Msg) []netip.Addr {
	out := []netip.Addr{}
	for _, rr := range m.Answer {
		if a, ok := rrAddr(rr); ok {
			out = append(out, a)
		}
	}
	return out
}

func rrAddr(rr dns.RR) (netip.Addr, bool) {
	var ip net.IP
	switch rr := rr.(type) {
	case *dns.A:
		ip = rr.A
	case *dns.AAAA:
		ip = rr.AAAA
	default:
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// keepAddrs removes from the answer the A and AAAA records whose address is not in keep, and every
// record that is neither those nor a CNAME; the authority and additional sections go too, but for
// the EDNS0 record.
func keepAddrs(m *dns.Msg, keep []netip.Addr) {
	var out []dns.RR
	for _, rr := range m.Answer {
		if a, ok := rrAddr(rr); ok {
			for _, k := range keep {
				if a == k {
					out = append(out, rr)
					break
				}
			}
		} else if _, cname := rr.(*dns.CNAME); cname {
			out = append(out, rr)
		}
	}
	m.Answer, m.Ns = out, nil
	var extra []dns.RR
	for _, rr := range m.Extra {
		if _, opt := rr.(*dns.OPT); opt {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
}

// minTTL is the smallest TTL of the answer's address records.
func minTTL(m *dns.Msg) time.Duration {
	var ttl uint32
	first := true
	for _, rr := range m.Answer {
		if _, ok := rrAddr(rr); ok && (first || rr.Header().Ttl < ttl) {
			ttl, first = rr.Header().Ttl, false
		}
	}
	return time.Duration(ttl) * time.Second
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// UpstreamsFromResolvConf returns the resolvers (HOST:PORT) that a resolv.conf file names.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("dns guard: read %s: %w", path, err)
	}
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("dns guard: %s names no nameserver; give --dns-upstream", path)
	}
	out := make([]string, len(cfg.Servers))
	for i, s := range cfg.Servers {
		out[i] = net.JoinHostPort(s, cfg.Port)
	}
	return out, nil
}

// TCPExchange returns an Exchanger that asks the upstream over a TCP connection that dial opens
// (for a sidecar whose only way out is a broker tunnel), whatever the client's network.
func TCPExchange(dial func(ctx context.Context, addr string) (net.Conn, error)) Exchanger {
	return func(ctx context.Context, m *dns.Msg, _, upstream string) (*dns.Msg, error) {
		c, err := dial(ctx, upstream)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		if d, ok := ctx.Deadline(); ok {
			c.SetDeadline(d)
		}
		co := &dns.Conn{Conn: c}
		if err := co.WriteMsg(m); err != nil {
			return nil, err
		}
		return co.ReadMsg()
	}
}
