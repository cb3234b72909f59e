package logstats

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"text/tabwriter"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Replayer runs recorded requests against a candidate policy. A request is decided with the address
// the proxy dialed for it when it was recorded (a localhost name with its loopback addresses), so
// the rule named is the one the proxy logs; without one, by its name. Replay itself never resolves
// a name: the proxy resolves names when it dials, so a name whose addresses turn out to be private
// is refused then, whatever replay says.
type Replayer struct {
	p        *policy.Policy
	cache    map[replayTarget]policy.Decision
	groups   map[replayKey]*replayGroup
	requests int64
	denied   int64
}

// replayTarget is a target and the address it was dialed at, when that decides.
type replayTarget struct {
	policy.Target
	addr netip.Addr
}

type replayKey struct {
	host  string
	allow bool
	rule  string // deciding rule ID, or the decision code when no rule decided
}

type replayGroup struct {
	ReplayGroup
	ports    map[int]struct{}
	clients  map[string]struct{}
	sessions map[string]struct{}
}

// NewReplayer replays against p.
func NewReplayer(p *policy.Policy) *Replayer {
	return &Replayer{p: p, cache: make(map[replayTarget]policy.Decision), groups: make(map[replayKey]*replayGroup)}
}

// Add replays e, which must name a host. An IP-literal host is checked as the address it is.
func (r *Replayer) Add(e *Entry) {
	if e.Method == accesslog.MethodDNS {
		return // a lookup is not a connection: the policy decides connections
	}
	d := r.decide(e)
	k := replayKey{host: e.Host, allow: d.Allow, rule: d.RuleID()}
	if k.rule == "" {
		k.rule = string(d.Code)
	}
	g := r.groups[k]
	if g == nil {
		g = &replayGroup{
			ReplayGroup: ReplayGroup{Host: e.Host, Rule: d.RuleID(), Code: string(d.Code), Reason: d.Reason, Fix: d.Fix, Pending: d.Pending},
			ports:       make(map[int]struct{}, 1),
			clients:     make(map[string]struct{}, 1),
			sessions:    make(map[string]struct{}),
		}
		r.groups[k] = g
	}
	g.Requests++
	if e.Blocked() {
		g.WasBlocked++
	}
	g.ports[e.Port] = struct{}{}
	if e.Client != "" {
		g.clients[e.Client] = struct{}{}
	}
	if e.Session != "" {
		g.sessions[e.Session] = struct{}{}
	}
	r.requests++
	if !d.Allow {
		r.denied++
	}
}

// decide is the candidate policy's decision for e, made as the proxy makes it when it dials: with
// the address the proxy dialed for e when the log has one, so that the rule named is the one the
// proxy would log; for a localhost name with its loopback addresses; otherwise by the name alone. A
// name that only an allow cidr rule could admit and that the log has no address for is denied,
// since nothing shows that it resolves into the rule.
func (r *Replayer) decide(e *Entry) policy.Decision {
	k := replayTarget{Target: policy.Target{Host: e.Host, Port: e.Port}}
	if ap, err := netip.ParseAddrPort(e.Upstream); err == nil {
		k.addr = ap.Addr().Unmap()
	}
	if d, ok := r.cache[k]; ok {
		return d
	}
	var addrs []netip.Addr
	if k.addr.IsValid() {
		addrs = []netip.Addr{k.addr}
	} else {
		addrs = policy.LoopbackAddrs(e.Host)
	}
	d := r.p.DecideDial(nil, k.Target, addrs)
	if d.Pending {
		d.Allow = false
		d.Reason = fmt.Sprintf("%s is allowed only if its addresses fall in an allow cidr rule, and the log has no address it was dialed at", e.Host)
		d.Fix = fmt.Sprintf("to allow it by name, add to allow: - {host: %s, ports: [%d]}", e.Host, e.Port)
	}
	r.cache[k] = d
	return d
}

// ReplayGroup is the requests to one host that got the same outcome from the same rule.
type ReplayGroup struct {
	Host     string `json:"host"`
	Ports    []int  `json:"ports"`
	Requests int64  `json:"requests"`
	// WasBlocked counts the requests that the proxy already refused when they were recorded.
	WasBlocked int64    `json:"was_blocked"`
	Clients    []string `json:"clients"`
	Sessions   []string `json:"sessions,omitempty"`
	Rule       string   `json:"rule,omitempty"`
	Code       string   `json:"code"`
	Reason     string   `json:"reason"`
	Fix        string   `json:"fix,omitempty"`
	// Pending marks names that only an allow cidr rule could admit, for which the log has no address.
	Pending bool `json:"pending,omitempty"`
}

// ReplayResult is what a candidate policy would have done to the recorded traffic.
type ReplayResult struct {
	Policy         string        `json:"policy"`
	Mode           string        `json:"mode"`
	Requests       int64         `json:"requests"`
	DeniedRequests int64         `json:"denied_requests"`
	Malformed      int64         `json:"malformed_lines"`
	WouldDeny      []ReplayGroup `json:"would_deny"`
	WouldAllow     []ReplayGroup `json:"would_allow"`
}

// Result returns the outcome so far, each list most requested first.
func (r *Replayer) Result() *ReplayResult {
	res := &ReplayResult{Policy: r.p.Source, Mode: string(r.p.Mode), Requests: r.requests, DeniedRequests: r.denied,
		WouldDeny: []ReplayGroup{}, WouldAllow: []ReplayGroup{}}
	for k, g := range r.groups {
		out := g.ReplayGroup
		out.Ports = slices.Sorted(maps.Keys(g.ports))
		out.Clients = slices.SortedFunc(maps.Keys(g.clients), compareAddrs)
		if len(g.sessions) > 0 {
			out.Sessions = slices.Sorted(maps.Keys(g.sessions))
		}
		if k.allow {
			res.WouldAllow = append(res.WouldAllow, out)
		} else {
			res.WouldDeny = append(res.WouldDeny, out)
		}
	}
	order := func(a, b ReplayGroup) int {
		if c := cmp.Compare(b.Requests, a.Requests); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return cmp.Compare(a.Rule+a.Code, b.Rule+b.Code)
	}
	slices.SortFunc(res.WouldDeny, order)
	slices.SortFunc(res.WouldAllow, order)
	return res
}

// WriteJSON writes the result as one indented JSON document.
func (res *ReplayResult) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return fmt.Errorf("write replay: %w", err)
	}
	return nil
}

// WriteTable writes the result for a terminal: denials first, with the clients that would break.
func (res *ReplayResult) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "replayed %d %s against %s (mode %s)\n", res.Requests, plural(res.Requests, "request"), res.Policy, res.Mode)
	count := func(gs []ReplayGroup) (hosts map[string]bool, n int64) {
		hosts = map[string]bool{}
		for _, g := range gs {
			hosts[g.Host] = true
			n += g.Requests
		}
		return hosts, n
	}
	dh, dn := count(res.WouldDeny)
	fmt.Fprintf(tw, "\nwould deny: %d %s to %d %s\n", dn, plural(dn, "request"), len(dh), plural(int64(len(dh)), "host"))
	if len(res.WouldDeny) > 0 {
		sessions := false
		for _, g := range res.WouldDeny {
			sessions = sessions || len(g.Sessions) > 0
		}
		fmt.Fprint(tw, "HOST\tPORTS\tREQUESTS\tWAS BLOCKED\tCLIENTS THAT WOULD BREAK\t")
		if sessions {
			fmt.Fprint(tw, "SESSIONS\t")
		}
		fmt.Fprintln(tw, "WHY")
		for _, g := range res.WouldDeny {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t", printable(g.Host), ints(g.Ports), g.Requests, g.WasBlocked, list(g.Clients, 4))
			if sessions {
				fmt.Fprintf(tw, "%s\t", list(g.Sessions, 3))
			}
			fmt.Fprintln(tw, printable(g.Reason))
		}
	}
	ah, an := count(res.WouldAllow)
	fmt.Fprintf(tw, "\nwould allow: %d %s to %d %s\n", an, plural(an, "request"), len(ah), plural(int64(len(ah)), "host"))
	if len(res.WouldAllow) > 0 {
		fmt.Fprintln(tw, "HOST\tPORTS\tREQUESTS\tRULE")
		for _, g := range res.WouldAllow {
			rule := g.Rule
			if rule == "" {
				rule = g.Code
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", printable(g.Host), ints(g.Ports), g.Requests, rule)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write replay: %w", err)
	}
	return nil
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return list(s, 6)
}
