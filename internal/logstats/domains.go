package logstats

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// HostRow is one line of the domain report: everything observed for one host.
type HostRow struct {
	Host     string `json:"host"`
	Requests int64  `json:"requests"`
	Allowed  int64  `json:"allowed"`
	Blocked  int64  `json:"blocked"`
	// Failed counts allowed requests that got no answer from the target (resolve, connect, timeout).
	Failed    int64     `json:"failed"`
	Methods   []string  `json:"methods"`
	Ports     []int     `json:"ports"`
	BytesOut  int64     `json:"bytes_out"`
	BytesIn   int64     `json:"bytes_in"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Clients   []string  `json:"clients"`
	Sessions  []string  `json:"sessions,omitempty"`
	// PrivateRefused counts requests refused because the host is, or resolved to, a private,
	// loopback, link-local or metadata address.
	PrivateRefused int64 `json:"private_refused,omitempty"`
	// Lookups counts the DNS guard's records for the name (any query type), LookupsRefused those
	// it refused; they are not requests.
	Lookups        int64 `json:"lookups,omitempty"`
	LookupsRefused int64 `json:"lookups_refused,omitempty"`
	// LookupOnly marks a name that was looked up but never connected to.
	LookupOnly bool `json:"lookup_only,omitempty"`
}

type hostAgg struct {
	row      HostRow
	methods  smallSet[string]
	ports    smallSet[int]
	clients  map[string]struct{}
	sessions map[string]struct{}
}

// smallSetMax is how many values a smallSet keeps in a slice before it moves them to a map.
const smallSetMax = 8

// smallSet is a set kept in a slice while it is small (the usual handful of methods or ports per
// host, where a slice beats a map) and in a map beyond that, so that an agent sending endless
// distinct methods or ports costs linear time, not quadratic.
type smallSet[T cmp.Ordered] struct {
	list []T
	m    map[T]struct{}
}

func (s *smallSet[T]) add(v T) {
	switch {
	case s.m != nil:
		s.m[v] = struct{}{}
	case slices.Contains(s.list, v):
	case len(s.list) < smallSetMax:
		s.list = append(s.list, v)
	default:
		s.m = make(map[T]struct{}, 4*smallSetMax)
		for _, x := range s.list {
			s.m[x] = struct{}{}
		}
		s.m[v] = struct{}{}
		s.list = nil
	}
}

// sorted returns the values in order.
func (s *smallSet[T]) sorted() []T {
	if s.m != nil {
		return slices.Sorted(maps.Keys(s.m))
	}
	return slices.Sorted(slices.Values(s.list))
}

// Domains aggregates entries per host. Its memory grows with the number of distinct hosts, clients
// and sessions, not with the number of entries.
type Domains struct {
	hosts map[string]*hostAgg
}

// NewDomains returns an empty aggregation.
func NewDomains() *Domains { return &Domains{hosts: make(map[string]*hostAgg)} }

// Add counts e, which must name a host.
func (d *Domains) Add(e *Entry) {
	h := d.hosts[e.Host]
	if h == nil {
		h = &hostAgg{
			row:      HostRow{Host: e.Host, FirstSeen: e.Time, LastSeen: e.Time},
			clients:  make(map[string]struct{}, 1),
			sessions: make(map[string]struct{}),
		}
		d.hosts[e.Host] = h
	}
	r := &h.row
	switch {
	case e.Method == accesslog.MethodDNS:
		r.Lookups++
		if e.Blocked() {
			r.LookupsRefused++
		}
	case e.Blocked():
		r.Requests++
		r.Blocked++
		if e.Error == ErrorPrivateAddress {
			r.PrivateRefused++
		}
	default:
		r.Requests++
		r.Allowed++
		if e.Error != "" {
			r.Failed++
		}
	}
	r.BytesIn += e.BytesIn
	r.BytesOut += e.BytesOut
	if e.Time.Before(r.FirstSeen) {
		r.FirstSeen = e.Time
	}
	if e.Time.After(r.LastSeen) {
		r.LastSeen = e.Time
	}
	if e.Method != "" && e.Method != accesslog.MethodDNS {
		h.methods.add(e.Method)
	}
	if e.Port != 0 {
		h.ports.add(e.Port)
	}
	addString(h.clients, e.Client)
	addString(h.sessions, e.Session)
}

// addString adds s to set unless it is empty; looking up before assigning is the cheap path,
// since nearly every entry repeats a known value.
func addString(set map[string]struct{}, s string) {
	if _, ok := set[s]; !ok && s != "" {
		set[s] = struct{}{}
	}
}

// Len is the number of hosts seen.
func (d *Domains) Len() int { return len(d.hosts) }

// Rows returns one row per host, most requested first (ties by host name).
func (d *Domains) Rows() []HostRow {
	rows := make([]HostRow, 0, len(d.hosts))
	for _, h := range d.hosts {
		r := h.row
		r.Methods = h.methods.sorted()
		r.Ports = h.ports.sorted()
		r.Clients = slices.SortedFunc(maps.Keys(h.clients), compareAddrs)
		r.LookupOnly = r.Requests == 0 && r.Lookups > 0
		if len(h.sessions) > 0 {
			r.Sessions = slices.Sorted(maps.Keys(h.sessions))
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b HostRow) int {
		if c := cmp.Compare(b.Requests, a.Requests); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Lookups, a.Lookups); c != 0 {
			return c
		}
		return cmp.Compare(a.Host, b.Host)
	})
	return rows
}

// compareAddrs orders IP addresses numerically and anything else after them, by text.
func compareAddrs(a, b string) int {
	x, errX := netip.ParseAddr(a)
	y, errY := netip.ParseAddr(b)
	switch {
	case errX == nil && errY == nil:
		return x.Compare(y)
	case errX == nil:
		return -1
	case errY == nil:
		return 1
	}
	return cmp.Compare(a, b)
}

// Group keys for DomainsBy.
const (
	ByHost    = "host"
	BySession = "session"
	ByClient  = "client"
)

// Group is the domain report of one session or client.
type Group struct {
	Kind     string    `json:"kind"` // BySession or ByClient
	Key      string    `json:"key"`
	Requests int64     `json:"requests"`
	Blocked  int64     `json:"blocked"`
	Lookups  int64     `json:"lookups,omitempty"`
	Hosts    []HostRow `json:"hosts"`
}

// Grouped aggregates entries per session (or per client for entries without a session, with
// BySession) or per client (ByClient), then per host.
type Grouped struct {
	by     string
	groups map[groupKey]*Domains
}

type groupKey struct{ kind, key string }

// NewGrouped groups by BySession or ByClient.
func NewGrouped(by string) *Grouped { return &Grouped{by: by, groups: make(map[groupKey]*Domains)} }

// Add counts e, which must name a host.
func (g *Grouped) Add(e *Entry) {
	k := groupKey{ByClient, e.Client}
	if g.by == BySession && e.Session != "" {
		k = groupKey{BySession, e.Session}
	}
	d := g.groups[k]
	if d == nil {
		d = NewDomains()
		g.groups[k] = d
	}
	d.Add(e)
}

// Groups returns the groups, most requests first (ties by kind and key).
func (g *Grouped) Groups() []Group {
	out := make([]Group, 0, len(g.groups))
	for k, d := range g.groups {
		gr := Group{Kind: k.kind, Key: k.key, Hosts: d.Rows()}
		for _, r := range gr.Hosts {
			gr.Requests += r.Requests
			gr.Blocked += r.Blocked
			gr.Lookups += r.Lookups
		}
		out = append(out, gr)
	}
	slices.SortFunc(out, func(a, b Group) int {
		if c := cmp.Compare(b.Requests, a.Requests); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		return compareAddrs(a.Key, b.Key)
	})
	return out
}
