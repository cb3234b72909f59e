package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Request-stage decision codes: the decisions on one request inside a connection whose rule inspects.
const (
	// CodeHTTPRuleNotMatched: no http entry of the rule allows the request's method and path (403).
	CodeHTTPRuleNotMatched Code = "http_rule_not_matched"
	// CodeAmbiguousPath: the path could be read two ways, so no rule can vouch for it (400).
	CodeAmbiguousPath Code = "ambiguous_path"
)

// ReadOnly is the value of a rule's access key that allows ReadOnlyMethods on every path.
const ReadOnly = "read-only"

// ReadOnlyMethods are the methods that access: read-only allows.
var ReadOnlyMethods = []string{"GET", "HEAD", "OPTIONS"}

// HTTPEntry is one validated entry of a rule's http list: a request is allowed when its method is one
// of Methods and its path matches one of Paths.
type HTTPEntry struct {
	Line    int // line in the policy file, 0 for entries made by access
	Methods []string
	Paths   []PathPattern
}

// Allows reports whether the entry allows method on the request path raw.
func (e *HTTPEntry) Allows(method, raw string) bool {
	if !slices.Contains(e.Methods, method) {
		return false
	}
	for _, p := range e.Paths {
		if p.Match(raw) {
			return true
		}
	}
	return false
}

// String is the entry in the policy file's flow style.
func (e *HTTPEntry) String() string {
	paths := make([]string, len(e.Paths))
	for i, p := range e.Paths {
		paths[i] = fmt.Sprintf("%q", p.src)
	}
	return fmt.Sprintf("{methods: [%s], paths: [%s]}", strings.Join(e.Methods, ", "), strings.Join(paths, ", "))
}

// Inspects reports whether connections the rule allows have their HTTPS terminated and each request
// decided (a rule with http, access or inspect: true).
func (r *Rule) Inspects() bool { return r != nil && r.Inspect }

// DecideRequest decides one HTTP request (its method and its path as sent, without the query) under
// the name-stage decision d. When d's rule does not inspect, d is returned unchanged: the rule allows
// the whole host. Otherwise the path must pass CheckPath (CodeAmbiguousPath) and, when the rule has
// http entries, one of them must allow the method and path (CodeHTTPRuleNotMatched); a rule with
// inspect: true and no entries allows every unambiguous request.
func (p *Policy) DecideRequest(d Decision, method, path string) Decision {
	r := d.Rule
	if !d.Allow || !r.Inspects() {
		return d
	}
	if err := CheckPath(path); err != nil {
		reason := strings.TrimPrefix(err.Error(), ErrAmbiguousPath.Error()+" ")
		return Decision{Code: CodeAmbiguousPath, Rule: r,
			Reason: fmt.Sprintf("path %s, so rule %s cannot vouch for it: paths that a server could read two ways are refused, not normalised", reason, r.ID()),
			Fix:    "send the path in its plain form (no dot segments, no //, no needless percent-encoding)"}
	}
	if r.HTTP == nil {
		return d
	}
	for i := range r.HTTP {
		if r.HTTP[i].Allows(method, path) {
			return d
		}
	}
	entries := make([]string, len(r.HTTP))
	for i := range r.HTTP {
		entries[i] = r.HTTP[i].String()
	}
	shown := path
	if len(shown) > 200 {
		shown = shown[:200] + "..."
	}
	return Decision{Code: CodeHTTPRuleNotMatched, Rule: r,
		Reason: fmt.Sprintf("%s %s is not allowed by rule %s: its http entries allow %s", method, shown, r.Describe(p.Source), strings.Join(entries, "; ")),
		Fix:    fmt.Sprintf("to allow it, add to the http list of rule %s in %s: - {methods: [%s], paths: [%q]}", r.ID(), p.sourceName(), method, shown)}
}

// HTTPSpec is one entry of a rule's http list in the policy file.
type HTTPSpec struct {
	Methods []string `yaml:"methods,flow"`
	Paths   []string `yaml:"paths,flow"`
}

// entry validates s; every problem is returned.
func (s HTTPSpec) entry(line int) (HTTPEntry, error) {
	e := HTTPEntry{Line: line}
	var errs []error
	if len(s.Methods) == 0 {
		errs = append(errs, errors.New("methods is missing: list the methods this entry allows, e.g. [GET, HEAD]"))
	}
	for _, m := range s.Methods {
		if err := CheckMethod(m); err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(e.Methods, m) {
			e.Methods = append(e.Methods, m)
		}
	}
	if len(s.Paths) == 0 {
		errs = append(errs, errors.New(`paths is missing: list the path patterns this entry allows, e.g. ["/repos/myorg/**"]`))
	}
	for _, raw := range s.Paths {
		pp, err := ParsePathPattern(raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		e.Paths = append(e.Paths, pp)
	}
	return e, errors.Join(errs...)
}

// CheckMethod checks that m is an HTTP method token. Methods are case-sensitive; a lower-case
// spelling of a standard method is refused as the mistake it almost always is.
func CheckMethod(m string) error {
	if m == "" {
		return errors.New("method \"\" is empty")
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return fmt.Errorf("method %q is not an HTTP method token", m)
		}
	}
	if up := strings.ToUpper(m); up != m {
		return fmt.Errorf("method %q: methods are case-sensitive, as HTTP defines them: write %s", m, up)
	}
	return nil
}
