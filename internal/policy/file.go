package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is the on-disk format of policy.yaml. It is converted into a Policy by Parse, which validates
// it and reports every problem with its line number.
type File struct {
	Version int        `yaml:"version,omitempty"`
	Mode    string     `yaml:"mode"`
	Allow   []RuleSpec `yaml:"allow,omitempty"`
	Deny    []RuleSpec `yaml:"deny,omitempty"`
	// NAT64Prefixes are the network's own NAT64 prefixes (RFC 6052: /32, /40, /48, /56, /64 or /96),
	// beside the well-known 64:ff9b::/96, whose addresses are judged by the IPv4 address they carry.
	NAT64Prefixes []string `yaml:"nat64_prefixes,omitempty,flow"`
}

// RuleSpec is one entry of allow or deny: exactly one of Host and CIDR, optionally limited to Ports.
// Host is an exact name, "*.example.com" (subdomains of example.com at any depth, not example.com
// itself) or "*" (any host). CIDR is a prefix or a single address.
type RuleSpec struct {
	Name    string `yaml:"name,omitempty"`
	Comment string `yaml:"comment,omitempty"`
	Host    string `yaml:"host,omitempty"`
	CIDR    string `yaml:"cidr,omitempty"`
	Ports   []int  `yaml:"ports,omitempty,flow"`
	// HTTP, on an allow rule, has the rule's HTTPS inspected and lists the requests it allows.
	HTTP []HTTPSpec `yaml:"http,omitempty"`
	// Access "read-only" allows ReadOnlyMethods on every path (and inspects).
	Access string `yaml:"access,omitempty"`
	// Inspect true inspects and logs every request and allows each one; false is refused with http or access.
	Inspect *bool `yaml:"inspect,omitempty"`

	// Inject sets headers on every request the rule allows, from the secrets file (allow rules only).
	Inject []InjectSpec `yaml:"inject,omitempty"`
	// Secrets names the secrets whose placeholders may appear in the rule's requests (allow rules only).
	Secrets []string `yaml:"secrets,omitempty,flow"`
}

// InjectSpec is one entry of a rule's inject: a header and its value, in which {{secret:NAME}} stands
// for the value of secret NAME, e.g. "Bearer {{secret:github}}".
type InjectSpec struct {
	Header string `yaml:"header"`
	Value  string `yaml:"value"`
}

// CurrentVersion is the newest file format version this build reads.
const CurrentVersion = 1

// ErrInvalid is wrapped by every validation error that Parse returns.
var ErrInvalid = errors.New("invalid policy")

// Load reads and parses a policy file.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates a policy file. name is used in error messages and reasons. All problems
// are reported at once, each as "name:line: problem".
func Parse(name string, data []byte) (*Policy, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w:\n%s", ErrInvalid, yamlMessage(name, err))
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%w: %s: the file is empty; it needs at least \"mode: enforce\" or \"mode: discovery\"", ErrInvalid, name)
	}
	var problems []problemAt
	problem := func(line int, format string, args ...any) {
		problems = append(problems, problemAt{line, fmt.Sprintf(format, args...)})
	}
	// The YAML parses: a value of the wrong type or an unknown key is one more problem, and the rest
	// of the file is checked too (yaml decodes everything else), so that one run reports them all.
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%w:\n%s", ErrInvalid, yamlMessage(name, err))
		}
		for _, m := range te.Errors {
			problems = append(problems, decodeProblem(&doc, m))
		}
	}
	lines := ruleLines(&doc)

	p := &Policy{Source: name}
	if f.Version != 0 && f.Version != CurrentVersion {
		problem(lines.key["version"], "version %d is not supported (this build reads version %d)", f.Version, CurrentVersion)
	}
	switch Mode(f.Mode) {
	case Enforce, Discovery:
		p.Mode = Mode(f.Mode)
	case "":
		problem(1, "mode is missing: set \"mode: enforce\" or \"mode: discovery\"")
	default:
		problem(lines.key["mode"], "mode %q is not valid: use enforce or discovery", f.Mode)
	}
	for _, list := range []string{"allow", "deny"} {
		specs := f.Allow
		if list == "deny" {
			specs = f.Deny
		}
		for i, spec := range specs {
			line := lines.at(list, i)
			r, err := spec.rule(list, i+1, line)
			bad := err != nil
			if bad {
				problem(line, "%s#%d: %s", list, i+1, strings.ReplaceAll(err.Error(), "\n", "; "))
			}
			for _, hp := range spec.inspection(&r, lines.httpAt(list, i)) {
				problem(hp.line, "%s#%d: %s", list, i+1, hp.msg)
				bad = true
			}
			if bad {
				continue
			}
			if list == "allow" {
				p.Allow = append(p.Allow, r)
			} else {
				p.Deny = append(p.Deny, r)
			}
		}
	}
	for i, s := range f.NAT64Prefixes {
		n, err := ParseNAT64Prefix(s)
		if err != nil {
			problem(lines.key["nat64_prefixes"], "nat64_prefixes#%d: %v", i+1, err)
			continue
		}
		p.NAT64 = append(p.NAT64, n)
	}
	for _, pr := range p.unboundSecrets() {
		problem(pr.line, "%s", pr.msg)
	}
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b problemAt) int { return a.line - b.line })
		msgs := make([]string, len(problems))
		for i, pr := range problems {
			msgs[i] = fmt.Sprintf("%s:%d: %s", name, pr.line, pr.msg)
		}
		return nil, fmt.Errorf("%w:\n%s", ErrInvalid, strings.Join(msgs, "\n"))
	}
	return p.prepare(), nil
}

// ParseNAT64Prefix parses one entry of nat64_prefixes: an IPv6 prefix of a length RFC 6052 defines,
// with no bits set after it.
func ParseNAT64Prefix(s string) (netip.Prefix, error) {
	n, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("%q is not a prefix such as 2001:db8:64::/96", s)
	case !n.Addr().Is6() || n.Addr().Is4In6():
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv6 prefix", s)
	case !slices.Contains(nat64Lengths, n.Bits()):
		return netip.Prefix{}, fmt.Errorf("%s: a NAT64 prefix is /32, /40, /48, /56, /64 or /96 (RFC 6052)", s)
	case n.Masked() != n:
		return netip.Prefix{}, fmt.Errorf("%s has bits set after the prefix length; did you mean %s?", s, n.Masked())
	}
	return n, nil
}

// problemAt is one validation problem and the line it is on.
type problemAt struct {
	line int
	msg  string
}

// inspection validates the http, access and inspect keys of s and sets them on r. lines holds the
// line of the rule and of each http entry.
func (s RuleSpec) inspection(r *Rule, lines httpLines) []problemAt {
	var problems []problemAt
	if s.HTTP == nil && s.Access == "" && s.Inspect == nil {
		return nil
	}
	if r.List == "deny" {
		return []problemAt{{lines.rule, "http, access and inspect belong on allow rules: a deny rule refuses the whole connection"}}
	}
	if s.Host == "" {
		return []problemAt{{lines.rule, "http, access and inspect need a host rule: a cidr rule is matched only after the name is resolved, too late to inspect"}}
	}
	wants := s.HTTP != nil || s.Access != "" || r.UsesSecrets()
	if s.Inspect != nil && !*s.Inspect && wants {
		problems = append(problems, problemAt{lines.rule, "inspect: false contradicts http, access, inject or secrets, which need inspection: remove inspect: false"})
	}
	switch s.Access {
	case "":
	case ReadOnly:
		all, _ := ParsePathPattern("/**")
		r.HTTP = append(r.HTTP, HTTPEntry{Methods: ReadOnlyMethods, Paths: []PathPattern{all}})
	default:
		problems = append(problems, problemAt{lines.key("access"), fmt.Sprintf("access %q is not valid: the one value is %s (GET, HEAD and OPTIONS on every path); list other methods under http", s.Access, ReadOnly)})
	}
	if s.HTTP != nil && len(s.HTTP) == 0 {
		problems = append(problems, problemAt{lines.key("http"), "http is empty, which would refuse every request: list entries, or use inspect: true to allow and log every request"})
	}
	for j, hs := range s.HTTP {
		line := lines.entry(j)
		e, err := hs.entry(line)
		if err != nil {
			for _, msg := range strings.Split(err.Error(), "\n") {
				problems = append(problems, problemAt{line, fmt.Sprintf("http#%d: %s", j+1, msg)})
			}
			continue
		}
		r.HTTP = append(r.HTTP, e)
	}
	r.Inspect = wants || *s.Inspect
	return problems
}

func (s RuleSpec) rule(list string, index, line int) (Rule, error) {
	r := Rule{List: list, Index: index, Line: line, Name: s.Name, Comment: s.Comment}
	var errs []error
	switch {
	case s.Host == "" && s.CIDR == "":
		errs = append(errs, errors.New("a rule needs host or cidr"))
	case s.Host != "" && s.CIDR != "":
		errs = append(errs, errors.New("a rule takes host or cidr, not both: split it into two rules"))
	case s.Host != "":
		h, err := normalizePattern(s.Host)
		if err != nil {
			errs = append(errs, err)
		}
		r.Host = h
	default:
		pfx, err := parseCIDR(s.CIDR)
		if err != nil {
			errs = append(errs, err)
		}
		r.Prefix = pfx
	}
	for _, port := range s.Ports {
		if port < 1 || port > 65535 {
			errs = append(errs, fmt.Errorf("port %d is not from 1 to 65535", port))
		}
	}
	r.Ports = s.Ports
	inject, secretNames, err := s.secretFields(list, r)
	if err != nil {
		errs = append(errs, err)
	}
	r.Inject, r.Secrets = inject, secretNames
	r.Inspect = r.UsesSecrets() // the proxy must read a request to put a secret in: HTTPS is inspected
	return r, errors.Join(errs...)
}

func normalizePattern(host string) (string, error) {
	if host == "*" {
		return "*", nil
	}
	rest, wild := strings.CutPrefix(host, "*.")
	if strings.Contains(rest, "*") {
		return "", fmt.Errorf("host %q: a wildcard is only allowed as a leading \"*.\" (\"*.example.com\") or as \"*\"", host)
	}
	n, err := NormalizeHost(rest)
	if err != nil {
		return "", fmt.Errorf("host %q: %v", host, errors.Unwrap(err))
	}
	if wild {
		if _, isIP := (Target{Host: n}).Addr(); isIP {
			return "", fmt.Errorf("host %q: wildcards apply to names, not addresses: use cidr", host)
		}
		return "*." + n, nil
	}
	return n, nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %q is not an address or prefix like 10.0.0.0/8", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("cidr %q has host bits set: did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// lineIndex remembers where things are in the YAML document, for error messages.
type lineIndex struct {
	key   map[string]int
	rules map[string][]int
	http  map[string][]httpLines
}

// httpLines are the lines of one rule, of its keys and of the entries of its http list.
type httpLines struct {
	rule    int
	keys    map[string]int
	entries []int
}

func (h httpLines) key(k string) int {
	if l := h.keys[k]; l > 0 {
		return l
	}
	return h.rule
}

func (h httpLines) entry(i int) int {
	if i < len(h.entries) {
		return h.entries[i]
	}
	return h.key("http")
}

func (l lineIndex) httpAt(list string, i int) httpLines {
	if i < len(l.http[list]) {
		return l.http[list][i]
	}
	return httpLines{rule: l.at(list, i)}
}

func (l lineIndex) at(list string, i int) int {
	if i < len(l.rules[list]) {
		return l.rules[list][i]
	}
	return l.key[list]
}

func ruleLines(doc *yaml.Node) lineIndex {
	l := lineIndex{key: map[string]int{}, rules: map[string][]int{}, http: map[string][]httpLines{}}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return l
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		l.key[k.Value] = k.Line
		if v.Kind == yaml.SequenceNode {
			for _, item := range v.Content {
				l.rules[k.Value] = append(l.rules[k.Value], item.Line)
				l.http[k.Value] = append(l.http[k.Value], ruleKeyLines(item))
			}
		}
	}
	return l
}

// ruleKeyLines indexes the keys of one rule and the entries of its http list.
func ruleKeyLines(item *yaml.Node) httpLines {
	h := httpLines{rule: item.Line, keys: map[string]int{}}
	if item.Kind != yaml.MappingNode {
		return h
	}
	for i := 0; i+1 < len(item.Content); i += 2 {
		k, v := item.Content[i], item.Content[i+1]
		h.keys[k.Value] = k.Line
		if k.Value == "http" && v.Kind == yaml.SequenceNode {
			for _, e := range v.Content {
				h.entries = append(h.entries, e.Line)
			}
		}
	}
	return h
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// unknownKeyRE matches yaml's message for a key that the file format does not have.
var unknownKeyRE = regexp.MustCompile(`^field (\S+) not found in type policy\.(File|RuleSpec|HTTPSpec|InjectSpec)$`)

// knownKeys names, for each type of the file format, what it is and the keys it has.
var knownKeys = map[string]struct{ what, keys string }{
	"File":       {"policy file", "version, mode, allow, deny, nat64_prefixes"},
	"RuleSpec":   {"rule", "host, cidr, ports, name, comment, http, access, inspect, inject, secrets"},
	"HTTPSpec":   {"http entry", "methods, paths"},
	"InjectSpec": {"header injection", "header, value"},
}

// decodeProblem is one of yaml's decoding messages ("line 4: cannot unmarshal ...") as a problem in
// the policy's words.
func decodeProblem(doc *yaml.Node, m string) problemAt {
	loc := yamlLineRE.FindStringSubmatch(m)
	if loc == nil {
		return problemAt{1, m}
	}
	line, _ := strconv.Atoi(loc[1])
	m = m[len(loc[0]):]
	if k := unknownKeyRE.FindStringSubmatch(m); k != nil {
		return problemAt{line, fmt.Sprintf("unknown key %q (a %s has: %s)", k[1], knownKeys[k[2]].what, knownKeys[k[2]].keys)}
	}
	if msg, ok := typeMessage(doc, line, m); ok {
		return problemAt{line, msg}
	}
	return problemAt{line, m}
}

// yamlMessage turns yaml.v3's "yaml: line 3: problem" into "name:3: problem", so that every message
// reads file:line: problem.
func yamlMessage(name string, err error) string {
	msgs := []string{err.Error()}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for i, m := range msgs {
		if loc := yamlLineRE.FindStringSubmatch(m); loc != nil {
			m = m[len(loc[0]):]
			if k := unknownKeyRE.FindStringSubmatch(m); k != nil {
				m = fmt.Sprintf("unknown key %q (a %s has: %s)", k[1], knownKeys[k[2]].what, knownKeys[k[2]].keys)
			}
			msgs[i] = fmt.Sprintf("%s:%s: %s", name, loc[1], m)
		} else {
			msgs[i] = fmt.Sprintf("%s: %s", name, strings.TrimPrefix(m, "yaml: "))
		}
	}
	return strings.Join(msgs, "\n")
}
