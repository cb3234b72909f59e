package logstats

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"
	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// GenerateOptions control policy generation.
type GenerateOptions struct {
	// Collapse, when 2 or more, turns that many or more subdomains of one registrable domain (by the
	// public suffix list) into one "*.domain" rule. 0 disables collapsing.
	Collapse int
	// ExcludeBlocked leaves out requests that the proxy refused.
	ExcludeBlocked bool
	// IncludeDenied turns hosts that a deny rule refused into allow rules like any other host; by
	// default they are left out and listed in a comment with the rule that denied them.
	IncludeDenied bool
	// Merge is an existing policy file to add to, named MergeName; its rules, their order and its
	// comments are kept. Nil starts from an empty policy.
	Merge     []byte
	MergeName string
	// HTTP gives each host with inspected requests an http list: the methods seen per path pattern.
	HTTP bool
}

// Generator collects entries and writes a policy that allows what they show.
type Generator struct {
	opts    GenerateOptions
	domains *Domains
	private map[string]int64  // hosts refused as private addresses, and how often
	hosts   map[string]string // logged host -> normalised host, "" when invalid
	// denied is what deny rules refused: normalised host and port -> the rules that did.
	denied map[hostPort]map[string]struct{}

	invalid   int64    // records whose host is not a valid name or address
	invalidAt []string // the first few of those hosts

	http *httpPaths // with opts.HTTP: the inspected requests' paths per host
}

// NewGenerator returns a generator with opts.
func NewGenerator(opts GenerateOptions) (*Generator, error) {
	if opts.Collapse == 1 || opts.Collapse < 0 {
		return nil, fmt.Errorf("generate policy: collapse %d: want 0 (off) or 2 or more", opts.Collapse)
	}
	g := &Generator{opts: opts, domains: NewDomains(), private: make(map[string]int64), hosts: make(map[string]string),
		denied: make(map[hostPort]map[string]struct{})}
	if opts.HTTP {
		g.http = newHTTPPaths()
	}
	return g, nil
}

// hostPort is a normalised host and a port.
type hostPort struct {
	host string
	port int
}

// maxRuleID bounds how much of a logged rule ID a comment repeats.
const maxRuleID = 64

// Add counts e, which must name a host. Requests refused because the host is or resolved to a
// private, loopback, link-local or metadata address never become rules: a host rule cannot admit
// them, and opening such addresses must be a person's decision.
//
// Hosts are normalised as the policy file requires; a host that is not a valid name or address
// (a damaged or forged log line, "*" included) is left out and counted, so that a log line can
// never widen the policy beyond one real host.
func (g *Generator) Add(e *Entry) {
	switch {
	case e.Method == accesslog.MethodDNS: // a lookup is not a connection: it needs no rule
	case e.Blocked() && e.Error == ErrorPrivateAddress:
		g.private[e.Host]++
	case e.Blocked() && g.opts.ExcludeBlocked && (e.Error != ErrorDeniedByRule || g.opts.IncludeDenied):
		// Left out without a word; what a deny rule refused is still listed below.
	default:
		h, ok := g.hosts[e.Host]
		if !ok {
			h, _ = policy.NormalizeHost(e.Host)
			if len(g.hosts) < maxInterned {
				g.hosts[e.Host] = h
			}
		}
		if h == "" {
			g.invalid++
			if len(g.invalidAt) < 5 && !slices.Contains(g.invalidAt, e.Host) {
				g.invalidAt = append(g.invalidAt, e.Host)
			}
			return
		}
		if e.Blocked() && e.Error == ErrorDeniedByRule && !g.opts.IncludeDenied {
			// A person denied it: a generated policy must not allow it back.
			k := hostPort{h, e.Port}
			if g.denied[k] == nil {
				g.denied[k] = make(map[string]struct{}, 1)
			}
			rule := e.Rule
			if rule == "" {
				rule = "a deny rule"
			}
			if len(rule) > maxRuleID {
				rule = rule[:maxRuleID] + "..."
			}
			g.denied[k][printable(rule)] = struct{}{}
			return
		}
		if h != e.Host {
			n := *e
			n.Host = h
			e = &n
		}
		g.domains.Add(e)
		if g.http != nil && e.Inspected && e.Path != "" {
			g.http.add(h, e)
		}
	}
}

// Generated is a generated policy file.
type Generated struct {
	YAML  []byte
	Added int      // rules added
	Notes []string // what a reviewer should know: hosts left out, existing rules that already cover hosts
}

// candidate is one rule to add, before it becomes YAML.
type candidate struct {
	host   string // name or "*.domain"; empty for cidr rules
	addr   netip.Addr
	domain string // registrable domain, for ordering
	ports  []int
	row    HostRow  // totals (for collapsed rules, summed over hosts)
	hosts  []string // the hosts a collapsed rule stands for
	// covered says which of the host's ports rules of the merged policy already allow.
	covered []string
	http    []httpEntry // the rule's http list; nil for none
}

// Generate writes the policy: the merged file (or a new one) in enforce mode, with one allow rule
// per observed host (or collapsed domain) that an existing rule does not already cover. The result
// is checked with policy.Parse before it is returned.
func (g *Generator) Generate() (*Generated, error) {
	if g.domains.Len() == 0 && len(g.private) == 0 && g.invalid == 0 && len(g.denied) == 0 {
		return nil, fmt.Errorf("generate policy: %w", ErrNoRecords)
	}
	out := &Generated{}
	doc, existing, err := g.base(out)
	if err != nil {
		return nil, err
	}
	rows := g.domains.Rows()
	var names, cidrs []candidate
	var covered, portless []string
	for _, r := range rows {
		if len(r.Ports) == 0 {
			portless = append(portless, r.Host) // a rule without ports would allow every port
			continue
		}
		c := candidate{host: r.Host, row: r}
		if a, err := netip.ParseAddr(r.Host); err == nil {
			c.host, c.addr = "", a.Unmap()
		} else {
			c.domain = registrable(r.Host)
			if g.http != nil {
				c.http = g.http.entries(r.Host)
			}
		}
		var coveredBy []string
		for _, port := range r.Ports {
			if g.denied[hostPort{r.Host, port}] != nil {
				continue // listed in the denied comment
			}
			if id := allowedBy(existing, c, port); id != "" {
				coveredBy = append(coveredBy, id)
				c.covered = append(c.covered, fmt.Sprintf("port %d already allowed by %s", port, id))
				continue
			}
			if id := deniedBy(existing, c, port); id != "" {
				out.Notes = append(out.Notes, fmt.Sprintf("%s:%d is denied by rule %s of %s: not added", r.Host, port, id, g.opts.MergeName))
				continue
			}
			c.ports = append(c.ports, port)
		}
		if len(coveredBy) > 0 && len(c.ports) == 0 {
			covered = append(covered, r.Host)
			if len(c.http) > 0 {
				out.Notes = append(out.Notes, fmt.Sprintf("%s has inspected requests, but rule %s of %s already allows it: add its http entries by hand (run without --merge to see them)",
					r.Host, coveredBy[0], g.opts.MergeName))
			}
		}
		if len(c.ports) == 0 {
			continue
		}
		if c.addr.IsValid() {
			cidrs = append(cidrs, c)
		} else {
			names = append(names, c)
		}
	}
	if len(covered) > 0 {
		out.Notes = append(out.Notes, fmt.Sprintf("%d %s already allowed by %s: %s", len(covered),
			plural(int64(len(covered)), "host"), g.opts.MergeName, prose(covered, 10)))
	}
	if g.invalid > 0 {
		quoted := make([]string, len(g.invalidAt))
		for i, h := range g.invalidAt {
			quoted[i] = strconv.Quote(h)
		}
		out.Notes = append(out.Notes, fmt.Sprintf("left out %d %s whose host is not a valid name or address (%s)",
			g.invalid, plural(g.invalid, "request"), prose(quoted, 5)))
	}
	if len(portless) > 0 {
		out.Notes = append(out.Notes, fmt.Sprintf("left out %d %s logged without a port: %s",
			len(portless), plural(int64(len(portless)), "host"), prose(portless, 10)))
	}
	if len(g.private) > 0 {
		hosts := slices.Sorted(maps.Keys(g.private))
		out.Notes = append(out.Notes, fmt.Sprintf("left out %d %s refused as private, loopback or metadata addresses (%s): "+
			"a host rule cannot admit them; if one is intended, add an allow rule with its cidr by hand",
			len(hosts), plural(int64(len(hosts)), "host"), prose(hosts, 10)))
	}
	deniedLines := g.deniedLines()
	if len(deniedLines) > 0 {
		out.Notes = append(out.Notes, fmt.Sprintf("left out %d %s (host and port) that a deny rule refused, listed in a comment at the end; --include-denied puts them back",
			len(deniedLines), plural(int64(len(deniedLines)), "target")))
	}
	if g.http != nil {
		out.Notes = append(out.Notes, g.http.notes()...)
	}
	if g.opts.Collapse >= 2 {
		names = collapse(names, g.opts.Collapse, g.deniedHosts())
	}
	// Related names sit together: ordered by registrable domain, then by name, each read from its
	// last label (so api.github.com follows github.com and precedes pypi.org).
	slices.SortFunc(names, func(a, b candidate) int {
		if c := cmp.Compare(reverseLabels(a.domain), reverseLabels(b.domain)); c != 0 {
			return c
		}
		if c := cmp.Compare(reverseLabels(strings.TrimPrefix(a.host, "*.")), reverseLabels(strings.TrimPrefix(b.host, "*."))); c != 0 {
			return c
		}
		return cmp.Compare(len(a.host), len(b.host)) // example.com before *.example.com
	})
	slices.SortFunc(cidrs, func(a, b candidate) int { return a.addr.Compare(b.addr) })

	allow := allowSeq(doc)
	for _, c := range append(names, cidrs...) {
		allow.Content = append(allow.Content, ruleNode(c))
		out.Added++
	}
	if len(allow.Content) > 0 {
		allow.Style = 0
	}
	if len(deniedLines) > 0 {
		root := doc.Content[0]
		c := "Left out: refused by a deny rule of the policy in force when logged (policy generate --include-denied puts them back):\n" +
			strings.Join(deniedLines, "\n")
		if root.FootComment != "" {
			c = root.FootComment + "\n\n" + c
		}
		root.FootComment = c
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("generate policy: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("generate policy: %w", err)
	}
	out.YAML = buf.Bytes()
	if _, err := policy.Parse("generated policy", out.YAML); err != nil {
		return nil, fmt.Errorf("generate policy: the result does not validate (a bug): %w", err)
	}
	return out, nil
}

// maxDeniedLines bounds the denied comment; the rest are counted.
const maxDeniedLines = 50

// deniedLines lists what deny rules refused, one "host:port denied by RULE" per host and port, in
// order, at most maxDeniedLines of them and a count of the rest.
func (g *Generator) deniedLines() []string {
	keys := slices.SortedFunc(maps.Keys(g.denied), func(a, b hostPort) int {
		return cmp.Or(cmp.Compare(a.host, b.host), cmp.Compare(a.port, b.port))
	})
	var lines []string
	for i, k := range keys {
		if i == maxDeniedLines {
			lines = append(lines, fmt.Sprintf("and %d more", len(keys)-i))
			break
		}
		rules := slices.Sorted(maps.Keys(g.denied[k]))
		lines = append(lines, fmt.Sprintf("%s denied by %s", net.JoinHostPort(k.host, strconv.Itoa(k.port)), strings.Join(rules, ", ")))
	}
	return lines
}

// deniedHosts is the set of hosts a deny rule refused on some port.
func (g *Generator) deniedHosts() map[string]bool {
	m := make(map[string]bool, len(g.denied))
	for k := range g.denied {
		m[k.host] = true
	}
	return m
}

// base returns the document to add rules to, switched to enforce mode, and the policy it holds.
func (g *Generator) base(out *Generated) (*yaml.Node, *policy.Policy, error) {
	src, name := g.opts.Merge, g.opts.MergeName
	if src == nil {
		src, name = []byte("version: 1\nmode: enforce\nallow: []\n"), "new policy"
	}
	existing, err := policy.Parse(name, src)
	if err != nil {
		return nil, nil, fmt.Errorf("generate policy: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, nil, fmt.Errorf("generate policy: %s: %w", name, err)
	}
	root := doc.Content[0]
	if g.opts.Merge == nil {
		var b strings.Builder
		fmt.Fprintf(&b, "Generated by swarm-proxy policy generate from %d %s", g.requests(), plural(g.requests(), "request"))
		if first, last := g.span(); !first.IsZero() {
			fmt.Fprintf(&b, " seen %s to %s", stamp(first), stamp(last))
		}
		b.WriteString(".\nEach rule allows one host (or a collapsed domain) on the ports it used; its comment says how often\n" +
			"and when it was seen. Review every rule before enforcing: see docs/discovery.md.")
		doc.HeadComment = b.String()
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k, v := root.Content[i], root.Content[i+1]; k.Value == "mode" && v.Value != string(policy.Enforce) {
			out.Notes = append(out.Notes, fmt.Sprintf("mode changed from %s to enforce", v.Value))
			v.Value, v.Tag, v.Style = string(policy.Enforce), "!!str", 0
		}
	}
	return &doc, existing, nil
}

func (g *Generator) requests() int64 {
	var n int64
	for _, h := range g.domains.hosts {
		n += h.row.Requests
	}
	return n
}

func (g *Generator) span() (first, last time.Time) {
	for _, h := range g.domains.hosts {
		if first.IsZero() || h.row.FirstSeen.Before(first) {
			first = h.row.FirstSeen
		}
		if h.row.LastSeen.After(last) {
			last = h.row.LastSeen
		}
	}
	return first, last
}

// allowSeq returns the allow sequence of doc, creating it when missing or null.
func allowSeq(doc *yaml.Node) *yaml.Node {
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k, v := root.Content[i], root.Content[i+1]; k.Value == "allow" {
			if v.Kind != yaml.SequenceNode {
				*v = yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", LineComment: v.LineComment}
			}
			return v
		}
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	root.Content = append(root.Content, scalar("allow"), seq)
	return seq
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }

func ruleNode(c candidate) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	if c.addr.IsValid() {
		n.Content = append(n.Content, scalar("cidr"), scalar(c.addr.String()))
	} else {
		n.Content = append(n.Content, scalar("host"), scalar(c.host))
	}
	ports := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
	for _, p := range c.ports {
		ports.Content = append(ports.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(p)})
	}
	n.Content = append(n.Content, scalar("ports"), ports, scalar("comment"), scalar(ruleComment(c)))
	if len(c.http) > 0 {
		n.Content = append(n.Content, scalar("http"), httpNode(c.http))
	}
	return n
}

// ruleComment says how often and when the rule's traffic was seen, and what it stands for.
func ruleComment(c candidate) string {
	r := c.row
	var b strings.Builder
	if len(c.hosts) > 0 {
		fmt.Fprintf(&b, "collapses %d hosts (%s); ", len(c.hosts), prose(c.hosts, 3))
	}
	if r.Requests == 1 {
		b.WriteString("seen once")
	} else {
		fmt.Fprintf(&b, "seen %d times", r.Requests)
	}
	switch {
	case r.Blocked > 0 && r.Failed > 0:
		fmt.Fprintf(&b, " (%d blocked, %d failed)", r.Blocked, r.Failed)
	case r.Blocked > 0:
		fmt.Fprintf(&b, " (%d blocked)", r.Blocked)
	case r.Failed > 0:
		fmt.Fprintf(&b, " (%d failed)", r.Failed)
	}
	if stamp(r.FirstSeen) == stamp(r.LastSeen) {
		fmt.Fprintf(&b, " at %s", stamp(r.FirstSeen))
	} else {
		fmt.Fprintf(&b, " from %s to %s", stamp(r.FirstSeen), stamp(r.LastSeen))
	}
	if len(r.Methods) > 0 {
		fmt.Fprintf(&b, ", %s", methodList(r.Methods))
	}
	fmt.Fprintf(&b, ", %d %s", len(r.Clients), plural(int64(len(r.Clients)), "client"))
	if len(r.Sessions) > 0 {
		fmt.Fprintf(&b, ", %d %s", len(r.Sessions), plural(int64(len(r.Sessions)), "session"))
	}
	if len(c.covered) > 0 {
		fmt.Fprintf(&b, "; %s", strings.Join(c.covered, ", "))
	}
	if c.addr.IsValid() {
		if kind := policy.SpecialKind(c.addr); kind != "" {
			fmt.Fprintf(&b, "; a %s address", kind)
		}
	}
	return b.String()
}

// commentMethods is how many methods a rule's comment names before it counts the rest.
const commentMethods = 4

// methodList names the methods a host used, at most commentMethods of them: "CONNECT GET", or
// "DELETE GET PATCH POST and 99,996 others" for an agent that sent endless distinct methods.
func methodList(methods []string) string {
	if len(methods) <= commentMethods {
		return strings.Join(methods, " ")
	}
	rest := len(methods) - commentMethods
	return strings.Join(methods[:commentMethods], " ") + " and " + thousands(rest) + " " + plural(int64(rest), "other")
}

// thousands formats n with commas between groups of three digits: 99998 is "99,998".
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// reverseLabels turns "api.github.com" into "com.github.api".
func reverseLabels(host string) string {
	labels := strings.Split(host, ".")
	slices.Reverse(labels)
	return strings.Join(labels, ".")
}

// registrable returns the registrable domain (eTLD+1) of host, or host itself when it has none (a
// single label, or a public suffix).
func registrable(host string) string {
	d, err := publicsuffix.EffectiveTLDPlusOne(host)
	if err != nil {
		return host
	}
	return d
}

// collapse replaces n or more names below one registrable domain with "*.domain". The domain itself,
// when seen, keeps its own rule: "*.domain" does not match it.
func collapse(names []candidate, n int, denied map[string]bool) []candidate {
	below := make(map[string][]int)
	for i, c := range names {
		if len(c.http) == 0 && c.domain != c.host && strings.HasSuffix(c.host, "."+c.domain) { // paths are per host
			below[c.domain] = append(below[c.domain], i)
		}
	}
	drop := make(map[int]bool)
	var out []candidate
	for _, domain := range slices.Sorted(maps.Keys(below)) {
		idx := below[domain]
		if len(idx) < n || coversAny(domain, denied) {
			continue // a "*.domain" rule would allow back a host that a deny rule refused
		}
		w := candidate{host: "*." + domain, domain: domain}
		ports := make(map[int]struct{})
		clients := make(map[string]struct{})
		sessions := make(map[string]struct{})
		methods := make(map[string]struct{})
		for k, i := range idx {
			c := names[i]
			drop[i] = true
			w.hosts = append(w.hosts, c.host)
			for _, p := range c.ports {
				ports[p] = struct{}{}
			}
			r := c.row
			if k == 0 || r.FirstSeen.Before(w.row.FirstSeen) {
				w.row.FirstSeen = r.FirstSeen
			}
			if r.LastSeen.After(w.row.LastSeen) {
				w.row.LastSeen = r.LastSeen
			}
			w.row.Requests += r.Requests
			w.row.Blocked += r.Blocked
			w.row.Failed += r.Failed
			addAll(clients, r.Clients)
			addAll(sessions, r.Sessions)
			addAll(methods, r.Methods)
		}
		slices.Sort(w.hosts)
		w.ports = slices.Sorted(maps.Keys(ports))
		w.row.Clients = slices.Collect(maps.Keys(clients))
		w.row.Sessions = slices.Collect(maps.Keys(sessions))
		w.row.Methods = slices.Sorted(maps.Keys(methods))
		out = append(out, w)
	}
	for i, c := range names {
		if !drop[i] {
			out = append(out, c)
		}
	}
	return out
}

// coversAny reports whether "*.domain" matches one of hosts.
func coversAny(domain string, hosts map[string]bool) bool {
	for h := range hosts {
		if strings.HasSuffix(h, "."+domain) {
			return true
		}
	}
	return false
}

func addAll(set map[string]struct{}, items []string) {
	for _, s := range items {
		set[s] = struct{}{}
	}
}

// allowedBy returns the ID of the first allow rule of p that admits c on port, or "".
func allowedBy(p *policy.Policy, c candidate, port int) string {
	for i := range p.Allow {
		if r := &p.Allow[i]; ruleMatches(r, c, port) {
			return r.ID()
		}
	}
	return ""
}

// deniedBy returns the ID of the first deny rule of p that refuses c on port, or "".
func deniedBy(p *policy.Policy, c candidate, port int) string {
	for i := range p.Deny {
		if r := &p.Deny[i]; ruleMatches(r, c, port) {
			return r.ID()
		}
	}
	return ""
}

func ruleMatches(r *policy.Rule, c candidate, port int) bool {
	if !r.MatchesPort(port) {
		return false
	}
	if c.addr.IsValid() {
		return r.Host == "*" || r.Prefix.IsValid() && r.Prefix.Contains(c.addr)
	}
	return r.MatchesHost(c.host)
}

// ErrNoRecords is returned when there is nothing to generate a policy from.
var ErrNoRecords = errors.New("no records with a host in the input")
