package policy

import (
	"errors"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"testing"
)

const inspectPolicy = `mode: enforce
allow:
  - host: api.github.com
    name: github
    ports: [443]
    http:
      - methods: [GET, HEAD]
        paths: ["/repos/myorg/**"]
      - methods: [POST]
        paths: ["/repos/myorg/*/issues"]
  - host: pypi.org
    access: read-only
  - host: "*.example.com"
    inspect: true
  - host: plain.example.org
  - host: files.example.org
    access: read-only
    http:
      - {methods: [PUT], paths: ["/upload/*"]}
`

func TestParseHTTPRules(t *testing.T) {
	p := mustParse(t, inspectPolicy)
	gh := &p.Allow[0]
	if !gh.Inspects() || len(gh.HTTP) != 2 || gh.HTTP[0].Line != 7 || gh.HTTP[1].Line != 9 {
		t.Fatalf("github rule: inspect %v, entries %+v", gh.Inspect, gh.HTTP)
	}
	if pypi := &p.Allow[1]; !pypi.Inspects() || len(pypi.HTTP) != 1 || strings.Join(pypi.HTTP[0].Methods, ",") != "GET,HEAD,OPTIONS" {
		t.Fatalf("read-only rule: %+v", pypi)
	}
	if ex := &p.Allow[2]; !ex.Inspects() || ex.HTTP != nil {
		t.Fatalf("inspect: true rule: %+v", ex)
	}
	if plain := &p.Allow[3]; plain.Inspects() {
		t.Fatal("a rule without http/access/inspect must stay passthrough")
	}
	if files := &p.Allow[4]; len(files.HTTP) != 2 {
		t.Fatalf("access plus http: want both entries, got %+v", files.HTTP)
	}
	if got := gh.Describe(p.Source); !strings.Contains(got, "inspected") {
		t.Errorf("Describe = %q, want it to say the rule inspects", got)
	}
}

func TestDecideRequest(t *testing.T) {
	p := mustParse(t, inspectPolicy)
	tests := []struct {
		host, method, path string
		code               Code // "" for allowed
	}{
		{"api.github.com", "GET", "/repos/myorg/tool/contents/README.md", ""},
		{"api.github.com", "GET", "/repos/myorg", ""},   // ** matches no segment
		{"api.github.com", "HEAD", "/repos/myorg/", ""}, // or an empty last one
		{"api.github.com", "GET", "/repos/other/tool", CodeHTTPRuleNotMatched},
		{"api.github.com", "GET", "/repos/myorgx/tool", CodeHTTPRuleNotMatched},
		{"api.github.com", "get", "/repos/myorg/tool", CodeHTTPRuleNotMatched}, // methods are exact
		{"api.github.com", "POST", "/repos/myorg/tool/issues", ""},
		{"api.github.com", "POST", "/repos/myorg/tool/pulls", CodeHTTPRuleNotMatched},
		{"api.github.com", "POST", "/repos/myorg/a/b/issues", CodeHTTPRuleNotMatched}, // * is one segment
		{"api.github.com", "POST", "/repos/myorg//issues", CodeAmbiguousPath},
		{"api.github.com", "DELETE", "/repos/myorg/tool", CodeHTTPRuleNotMatched},
		{"api.github.com", "GET", "/repos/myorg/../other/x", CodeAmbiguousPath},
		{"api.github.com", "GET", "/repos/myorg/%2e%2e/other", CodeAmbiguousPath},
		{"api.github.com", "GET", "/repos/myorg%2F..%2Fother", CodeAmbiguousPath},
		{"api.github.com", "GET", "/repos/%6Dyorg/x", CodeAmbiguousPath},
		{"api.github.com", "GET", "/repos/myorg/x%20y", ""}, // a space must be encoded: not ambiguous
		{"pypi.org", "GET", "/simple/requests/", ""},
		{"pypi.org", "OPTIONS", "/", ""},
		{"pypi.org", "POST", "/legacy/", CodeHTTPRuleNotMatched},
		{"pypi.org", "PUT", "/x", CodeHTTPRuleNotMatched},
		{"pypi.org", "DELETE", "/x", CodeHTTPRuleNotMatched},
		{"a.example.com", "DELETE", "/anything/at/all", ""},
		{"a.example.com", "GET", "/a/./b", CodeAmbiguousPath}, // inspect: true still refuses ambiguity
		{"plain.example.org", "DELETE", "/a/../b", ""},        // passthrough: not inspected
		{"files.example.org", "PUT", "/upload/x.tgz", ""},
		{"files.example.org", "PUT", "/other/x.tgz", CodeHTTPRuleNotMatched},
	}
	for _, tt := range tests {
		d := p.Decide(Target{Host: tt.host, Port: 443}, nil)
		if !d.Allow {
			t.Fatalf("%s: name stage denied: %s", tt.host, d.Reason)
		}
		got := p.DecideRequest(d, tt.method, tt.path)
		switch {
		case tt.code == "" && !got.Allow:
			t.Errorf("%s %s %s: denied (%s: %s), want allowed", tt.host, tt.method, tt.path, got.Code, got.Reason)
		case tt.code != "" && (got.Allow || got.Code != tt.code):
			t.Errorf("%s %s %s: %v %s, want denied with %s", tt.host, tt.method, tt.path, got.Allow, got.Code, tt.code)
		case tt.code != "" && got.RuleID() != d.RuleID():
			t.Errorf("%s %s %s: rule %q, want %q", tt.host, tt.method, tt.path, got.RuleID(), d.RuleID())
		}
	}
}

func TestDecideRequestReasonNamesMethodPathRule(t *testing.T) {
	p := mustParse(t, inspectPolicy)
	d := p.DecideRequest(p.Decide(Target{Host: "api.github.com", Port: 443}, nil), "DELETE", "/repos/myorg/tool")
	for _, want := range []string{"DELETE /repos/myorg/tool", "rule github", "policy.yaml line 3", `"/repos/myorg/**"`} {
		if !strings.Contains(d.Reason, want) {
			t.Errorf("reason %q lacks %q", d.Reason, want)
		}
	}
	if !strings.Contains(d.Fix, `- {methods: [DELETE], paths: ["/repos/myorg/tool"]}`) {
		t.Errorf("fix %q does not show the entry to add", d.Fix)
	}
	// A denied name-stage decision is returned as it is.
	denied := Decision{Code: CodeNoRule}
	if got := p.DecideRequest(denied, "GET", "/"); got.Code != CodeNoRule || got.Allow {
		t.Errorf("DecideRequest changed a deny: %+v", got)
	}
}

func TestParseHTTPErrorsWithLines(t *testing.T) {
	src := `mode: enforce
allow:
  - host: api.github.com
    http:
      - methods: [get]
        paths: ["repos/**"]
      - methods: [GET]
        paths: ["/a/b*", "/x//y", "/a/../b"]
      - paths: ["/ok"]
  - host: pypi.org
    access: read-write
  - host: x.example
    inspect: false
    access: read-only
  - cidr: 10.0.0.0/8
    inspect: true
  - host: y.example
    http: []
  - host: z.example
    http:
      - {methods: [GET], paths: ["/"], verbs: [GET]}
deny:
  - host: evil.example
    inspect: true
`
	_, err := Parse("policy.yaml", []byte(src))
	if err == nil || !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`policy.yaml:21: unknown key "verbs" (a http entry has: methods, paths)`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	// The unknown key stops yaml decoding; check the rest without it.
	src = strings.Replace(src, ", verbs: [GET]", "", 1)
	_, err = Parse("policy.yaml", []byte(src))
	msg = err.Error()
	for _, want := range []string{
		`policy.yaml:5: allow#1: http#1: method "get": methods are case-sensitive, as HTTP defines them: write GET`,
		`policy.yaml:5: allow#1: http#1: path "repos/**" must start with /`,
		`policy.yaml:7: allow#1: http#2: path "/a/b*": a wildcard must be a whole segment`,
		`policy.yaml:7: allow#1: http#2: path "/x//y" has an empty segment`,
		`policy.yaml:7: allow#1: http#2: path "/a/../b": it has a ".." segment`,
		`policy.yaml:9: allow#1: http#3: methods is missing`,
		`policy.yaml:11: allow#2: access "read-write" is not valid`,
		`policy.yaml:12: allow#3: inspect: false contradicts http, access, inject or secrets`,
		`policy.yaml:15: allow#4: http, access and inspect need a host rule`,
		`policy.yaml:18: allow#5: http is empty`,
		`policy.yaml:23: deny#1: http, access and inspect belong on allow rules`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

func TestCheckPath(t *testing.T) {
	ok := []string{"/", "/a", "/a/", "/a/b.c/d", "/a%20b", "/%E2%82%AC", "/a;b=c", "/a:b@c", "/a/b~c_d-e.f", "/...", "/.a", "/a..", "/a%3Fb", "/a%25"}
	for _, p := range ok {
		if err := CheckPath(p); err != nil {
			t.Errorf("CheckPath(%q) = %v, want ok", p, err)
		}
	}
	bad := map[string]string{
		"":              "start with /",
		"a/b":           "start with /",
		"//a":           "empty segment",
		"/a//b":         "empty segment",
		"/.":            `"." segment`,
		"/a/./b":        `"." segment`,
		"/a/..":         `".." segment`,
		"/a/../b":       `".." segment`,
		"/a/..;x/b":     `"..;x" segment`,
		"/a/..%3Bx/b":   `"..%3Bx" segment`,
		"/a%2Fb":        "encoded /",
		"/a%2fb":        "encoded /",
		"/a%5Cb":        "encoded \\",
		"/%2e%2e/b":     "encoded .",
		"/a/%2E":        "encoded .",
		"/%61":          "unreserved",
		"/a%7e":         "unreserved",
		"/a%2D":         "unreserved",
		"/a\\b":         "backslash",
		"/a\x00b":       "control",
		"/a%00b":        "encoded control",
		"/a%0d%0ab":     "encoded control",
		"/a\tb":         "control",
		"/a\x7fb":       "control",
		"/a%":           "malformed",
		"/a%4":          "malformed",
		"/a%zz":         "malformed",
		"/a b":          "percent-encode",
		"/a\"b":         "percent-encode",
		"/a{b}":         "percent-encode",
		"/\xc3\xa9":     "percent-encode",
		"/a[1]":         "percent-encode",
		"/a|b":          "percent-encode",
		"/a#b":          "percent-encode",
		"/a/b/../../..": `".." segment`,
	}
	for p, want := range bad {
		err := CheckPath(p)
		if err == nil || !errors.Is(err, ErrAmbiguousPath) || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckPath(%q) = %v, want ErrAmbiguousPath naming %q", p, err, want)
		}
	}
}

func TestPathPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		yes, no []string
	}{
		{"/", []string{"/"}, []string{"/a", "/a/"}},
		{"/**", []string{"/", "/a", "/a/b/c", "/a/"}, nil},
		{"/a", []string{"/a"}, []string{"/", "/a/", "/ab", "/a/b", "/A"}},
		{"/a/", []string{"/a/"}, []string{"/a", "/a/b"}},
		{"/a/*", []string{"/a/b", "/a/b%20c"}, []string{"/a", "/a/", "/a/b/c"}},
		{"/a/**", []string{"/a", "/a/", "/a/b", "/a/b/c/d"}, []string{"/", "/ab", "/b/a"}},
		{"/a/**/z", []string{"/a/z", "/a/b/z", "/a/b/c/z"}, []string{"/a", "/a/z/y", "/a/zz"}},
		{"/**/z", []string{"/z", "/a/z", "/z/z"}, []string{"/", "/za", "/z/a"}},
		{"/*/*/issues", []string{"/a/b/issues"}, []string{"/a/issues", "/a/b/c/issues"}},
		{"/**/a/**/b", []string{"/a/b", "/x/a/y/b", "/a/a/b/b"}, []string{"/b/a", "/a"}},
		{"/a%20b/c", []string{"/a%20b/c"}, []string{"/a+b/c"}},
		{"/€/x", []string{"/%E2%82%AC/x", "/%e2%82%ac/x"}, []string{"/x"}},
	}
	for _, tt := range tests {
		p, err := ParsePathPattern(tt.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tt.pattern, err)
		}
		for _, s := range tt.yes {
			if !p.Match(s) {
				t.Errorf("%s should match %s", tt.pattern, s)
			}
		}
		for _, s := range tt.no {
			if p.Match(s) {
				t.Errorf("%s should not match %s", tt.pattern, s)
			}
		}
	}
}

func TestPathOf(t *testing.T) {
	tests := map[string]string{
		"/a/b?x=1":                "/a/b",
		"/a%2Fb":                  "/a%2Fb",
		"http://h.example/a/b?q":  "/a/b",
		"http://h.example":        "/",
		"http://h.example?q=/x/y": "/",
		"*":                       "*",
		"/":                       "/",
	}
	for in, want := range tests {
		if got := PathOf(in); got != want {
			t.Errorf("PathOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzCheckPath checks that a path CheckPath accepts is read the same way by Go's URL parser, by
// path cleaning and by a server that decodes segments: what a rule matches is what a server serves.
func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "/a/../b", "/a%2Fb", "/a%2e", "/%41", "/a\\b", "/a;x", "/..;/", "/a%20b/", "//", "/a%zz", "/\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		err := CheckPath(raw)
		if err != nil {
			if !errors.Is(err, ErrAmbiguousPath) {
				t.Fatalf("CheckPath(%q) = %v, not ErrAmbiguousPath", raw, err)
			}
			return
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("CheckPath accepted %q, which url.Parse refuses: %v", raw, err)
		}
		if got := u.EscapedPath(); got != raw {
			t.Fatalf("accepted %q is sent upstream as %q", raw, got)
		}
		clean := path.Clean(u.Path)
		if strings.HasSuffix(u.Path, "/") && clean != "/" {
			clean += "/"
		}
		if clean != u.Path {
			t.Fatalf("accepted %q (decoded %q) changes when cleaned: %q", raw, u.Path, clean)
		}
		if strings.ContainsAny(u.Path, "\\\x00") || strings.Count(u.Path, "/") != strings.Count(raw, "/") {
			t.Fatalf("accepted %q decodes to %q, which splits differently", raw, u.Path)
		}
		// A pattern made of the path's own segments matches it, and so does "/**".
		all, _ := ParsePathPattern("/**")
		if !all.Match(raw) {
			t.Fatalf("/** does not match %q", raw)
		}
		if self, err := ParsePathPattern(raw); err == nil && !strings.Contains(raw, "*") && !self.Match(raw) {
			t.Fatalf("pattern %q does not match itself", raw)
		}
	})
}

// FuzzPathPattern checks that matching never panics and that "**" and "*" keep their meaning
// against a reference matcher over the same segments.
func FuzzPathPattern(f *testing.F) {
	f.Add("/a/**/b", "/a/x/y/b")
	f.Add("/*/x", "/y/x")
	f.Add("/**", "/")
	f.Add("/**/**/a", "/a/a/a")
	f.Fuzz(func(t *testing.T, pattern, raw string) {
		p, err := ParsePathPattern(pattern)
		if err != nil || CheckPath(raw) != nil {
			return
		}
		var segs []string
		if raw != "/" {
			segs = strings.Split(raw[1:], "/")
		}
		if got, want := p.Match(raw), refMatch(p.segs, segs); got != want {
			t.Fatalf("%q.Match(%q) = %v, reference says %v", pattern, raw, got, want)
		}
	})
}

func refMatch(pat []patternSeg, segs []string) bool {
	if len(pat) == 0 {
		return len(segs) == 0
	}
	switch pat[0].kind {
	case segAny:
		for i := 0; i <= len(segs); i++ {
			if refMatch(pat[1:], segs[i:]) {
				return true
			}
		}
		return false
	case segOne:
		return len(segs) > 0 && segs[0] != "" && refMatch(pat[1:], segs[1:])
	default:
		return len(segs) > 0 && decodeSegment(segs[0]) == pat[0].lit && refMatch(pat[1:], segs[1:])
	}
}

// TestInspectingHostRuleKeepsDecidingWithCIDR: when a cidr rule admits the addresses of a target whose
// host rule inspects (an IP-literal host rule on a private address needs one), the host rule still
// decides, so its per-request checks are not lifted.
func TestInspectingHostRuleKeepsDecidingWithCIDR(t *testing.T) {
	p := mustParse(t, "mode: enforce\nallow:\n  - host: 10.0.0.5\n    name: api\n    access: read-only\n  - cidr: 10.0.0.0/8\n  - host: db.internal\n")
	for _, tt := range []struct {
		host  string
		addrs []netip.Addr
		rule  string
	}{
		{"10.0.0.5", nil, "api"},
		{"10.0.0.5", addrs("10.0.0.5"), "api"},
		{"db.internal", addrs("10.0.0.7"), "allow#2"}, // no inspecting host rule: the cidr rule decides
	} {
		d := p.Decide(Target{Host: tt.host, Port: 443}, tt.addrs)
		if !d.Allow || d.RuleID() != tt.rule {
			t.Errorf("%s %v: %v %s, want allowed by %s", tt.host, tt.addrs, d.Allow, d.RuleID(), tt.rule)
		}
	}
	if d := p.DecideRequest(p.Decide(Target{Host: "10.0.0.5", Port: 443}, nil), "POST", "/x"); d.Allow {
		t.Error("POST allowed on a read-only rule reached through a cidr rule")
	}
}
