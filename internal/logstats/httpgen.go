package logstats

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// maxPatternsPerHost bounds the path patterns kept for one host, so that a log of endless distinct
// paths neither grows memory without limit nor makes a rule no one can review.
const maxPatternsPerHost = 256

// httpPaths collects, per normalised host, the methods seen on each path pattern of inspected requests.
type httpPaths struct {
	hosts map[string]map[string][]string // host -> pattern -> methods

	ambiguous   int64    // requests whose path could not become a pattern
	ambiguousAt []string // the first few of those paths
	overflow    map[string]int64
}

func newHTTPPaths() *httpPaths {
	return &httpPaths{hosts: make(map[string]map[string][]string), overflow: make(map[string]int64)}
}

// add counts one inspected request to host (normalised).
func (h *httpPaths) add(host string, e *Entry) {
	pattern, ok := PathPattern(e.Path)
	if !ok || policy.CheckMethod(e.Method) != nil {
		h.ambiguous++
		if len(h.ambiguousAt) < 5 {
			h.ambiguousAt = append(h.ambiguousAt, strconv.Quote(e.Method+" "+truncate(e.Path, 60)))
		}
		return
	}
	pats := h.hosts[host]
	if pats == nil {
		pats = make(map[string][]string)
		h.hosts[host] = pats
	}
	methods, seen := pats[pattern]
	if !seen && len(pats) >= maxPatternsPerHost {
		h.overflow[host]++
		return
	}
	if !slices.Contains(methods, e.Method) {
		pats[pattern] = append(methods, e.Method)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// PathPattern turns a request path (as logged: escaped, without the query) into an http path
// pattern: segments that look like ids (numbers, UUIDs, long hex) become "*". It reports false for a
// path that a rule could not match (policy.CheckPath refuses it).
func PathPattern(path string) (string, bool) {
	if policy.CheckPath(path) != nil {
		return "", false
	}
	if path == "/" {
		return path, true
	}
	segs := strings.Split(path[1:], "/")
	for i, s := range segs {
		switch {
		case looksLikeID(s):
			segs[i] = "*"
		case strings.Contains(s, "*"):
			segs[i] = strings.ReplaceAll(s, "*", "%2A") // a literal star, not a wildcard
		}
	}
	return "/" + strings.Join(segs, "/"), true
}

// looksLikeID reports whether a path segment is an identifier rather than a name: a number, a UUID,
// or a long hexadecimal string (a commit, a digest).
func looksLikeID(s string) bool {
	if s == "" {
		return false
	}
	digits, hex := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
			hex++
		}
	}
	switch {
	case digits == len(s):
		return true
	case len(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' && hex == 32:
		return true
	default:
		return len(s) >= 12 && hex == len(s) && digits > 0
	}
}

// httpEntry is one entry to write: methods and the path patterns they were seen on.
type httpEntry struct {
	methods []string
	paths   []string
}

// entries returns host's http entries: patterns with the same methods share an entry; entries are
// ordered by their first pattern, methods in a fixed order.
func (h *httpPaths) entries(host string) []httpEntry {
	pats := h.hosts[host]
	if len(pats) == 0 {
		return nil
	}
	byMethods := make(map[string]*httpEntry)
	for _, p := range slices.Sorted(maps.Keys(pats)) {
		methods := slices.Clone(pats[p])
		slices.SortFunc(methods, compareMethods)
		key := strings.Join(methods, " ")
		e := byMethods[key]
		if e == nil {
			e = &httpEntry{methods: methods}
			byMethods[key] = e
		}
		e.paths = append(e.paths, p)
	}
	out := make([]httpEntry, 0, len(byMethods))
	for _, e := range byMethods {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b httpEntry) int { return strings.Compare(a.paths[0], b.paths[0]) })
	return out
}

// methodOrder puts the common methods in the order people write them; others follow by name.
var methodOrder = map[string]int{"GET": 1, "HEAD": 2, "OPTIONS": 3, "POST": 4, "PUT": 5, "PATCH": 6, "DELETE": 7}

func compareMethods(a, b string) int {
	oa, ob := methodOrder[a], methodOrder[b]
	if oa == 0 {
		oa = 100
	}
	if ob == 0 {
		ob = 100
	}
	if oa != ob {
		return oa - ob
	}
	return strings.Compare(a, b)
}

// notes says what a reviewer should know about the http entries.
func (h *httpPaths) notes() []string {
	var out []string
	if h.ambiguous > 0 {
		out = append(out, fmt.Sprintf("left out %d inspected %s whose method or path no rule can match (%s)",
			h.ambiguous, plural(h.ambiguous, "request"), prose(h.ambiguousAt, 5)))
	}
	for _, host := range slices.Sorted(maps.Keys(h.overflow)) {
		out = append(out, fmt.Sprintf("%s: more than %d path patterns; %d %s on other paths left out: review its http entries, or use inspect: true",
			host, maxPatternsPerHost, h.overflow[host], plural(h.overflow[host], "request")))
	}
	return out
}

// httpNode is the YAML of a rule's http list, each entry in flow style.
func httpNode(entries []httpEntry) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, e := range entries {
		m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle}
		methods := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
		for _, x := range e.methods {
			methods.Content = append(methods.Content, scalar(x))
		}
		paths := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
		for _, p := range e.paths {
			paths.Content = append(paths.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: p, Style: yaml.DoubleQuotedStyle})
		}
		m.Content = append(m.Content, scalar("methods"), methods, scalar("paths"), paths)
		seq.Content = append(seq.Content, m)
	}
	return seq
}
