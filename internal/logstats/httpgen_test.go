package logstats

import (
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

func TestPathPattern(t *testing.T) {
	tests := map[string]string{
		"/":                           "/",
		"/repos/myorg/tool/issues/42": "/repos/myorg/tool/issues/*",
		"/v1/items/0b8f2c9e-3a71-4c1e-9e3f-2d1c0a9b8e7f":     "/v1/items/*",
		"/objects/4b825dc642cb6eb9a060e54bf8d69288fbee4904/": "/objects/*/",
		"/simple/requests/": "/simple/requests/",
		"/cafe/beef":        "/cafe/beef", // short hex words stay
		"/deadbeefcafe":     "/deadbeefcafe",
		"/v2/a*b":           "/v2/a%2Ab",
		"/a%20b/7":          "/a%20b/*",
	}
	for in, want := range tests {
		got, ok := PathPattern(in)
		if !ok || got != want {
			t.Errorf("PathPattern(%q) = %q, %v; want %q", in, got, ok, want)
		}
		p, err := policy.ParsePathPattern(got)
		if err != nil || !p.Match(in) {
			t.Errorf("pattern %q (%v) does not match the path %q it came from", got, err, in)
		}
	}
	for _, bad := range []string{"/a/../b", "/a%2Fb", "", "x", "/a//b"} {
		if got, ok := PathPattern(bad); ok {
			t.Errorf("PathPattern(%q) = %q, want refused", bad, got)
		}
	}
}

func TestGenerateHTTP(t *testing.T) {
	g, err := NewGenerator(GenerateOptions{HTTP: true, Collapse: 2})
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	add := func(host, method, path string, inspected bool) {
		g.Add(&Entry{Time: ts, Client: "10.0.0.1", Host: host, Port: 443, Method: method, Path: path, Decision: "allow", Inspected: inspected})
	}
	add("api.github.com", "CONNECT", "", false) // the tunnel's own record
	add("api.github.com", "GET", "/repos/myorg/tool/issues/1", true)
	add("api.github.com", "GET", "/repos/myorg/tool/issues/2", true)
	add("api.github.com", "HEAD", "/repos/myorg/tool/issues/3", true)
	add("api.github.com", "POST", "/repos/myorg/tool/issues", true)
	add("api.github.com", "GET", "/repos/myorg/tool", true)
	add("api.github.com", "GET", "/repos/myorg/../x", true) // ambiguous: left out, noted
	add("api.github.com", "get", "/lower", true)            // not a method a rule can name
	add("a.pypi.org", "GET", "/simple/x/", true)
	add("b.pypi.org", "GET", "/", false)
	add("c.pypi.org", "GET", "/", false)
	add("example.org", "GET", "/plain/http", false) // not inspected: no http list
	out, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	y := string(out.YAML)
	for _, want := range []string{
		"  - host: api.github.com\n    ports: [443]\n",
		`    http:
      - {methods: [GET], paths: ["/repos/myorg/tool"]}
      - {methods: [POST], paths: ["/repos/myorg/tool/issues"]}
      - {methods: [GET, HEAD], paths: ["/repos/myorg/tool/issues/*"]}
`,
		"  - host: a.pypi.org\n", // not collapsed: its paths are its own
		`      - {methods: [GET], paths: ["/simple/x/"]}`,
		"  - host: example.org\n    ports: [443]\n    comment:",
	} {
		if !strings.Contains(y, want) {
			t.Errorf("generated policy lacks %q:\n%s", want, y)
		}
	}
	if strings.Contains(y, "/plain/http") || strings.Contains(y, "/lower") || strings.Contains(y, "..") {
		t.Errorf("a path that is not inspected or not matchable became an entry:\n%s", y)
	}
	notes := strings.Join(out.Notes, "\n")
	if !strings.Contains(notes, "left out 2 inspected requests whose method or path no rule can match") {
		t.Errorf("notes: %s", notes)
	}
	p, err := policy.Parse("generated", out.YAML)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Decide(policy.Target{Host: "api.github.com", Port: 443}, nil)
	for _, req := range []struct {
		method, path string
		allow        bool
	}{
		{"GET", "/repos/myorg/tool/issues/99", true},
		{"POST", "/repos/myorg/tool/issues", true},
		{"DELETE", "/repos/myorg/tool/issues/99", false},
		{"POST", "/repos/myorg/tool", false},
	} {
		if got := p.DecideRequest(d, req.method, req.path).Allow; got != req.allow {
			t.Errorf("%s %s: allowed %v, want %v", req.method, req.path, got, req.allow)
		}
	}
}

func TestGenerateHTTPBound(t *testing.T) {
	g, _ := NewGenerator(GenerateOptions{HTTP: true})
	ts := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	for i := range maxPatternsPerHost + 10 {
		g.Add(&Entry{Time: ts, Host: "x.example", Port: 443, Method: "GET", Path: "/p" + strings.Repeat("x", i%300) + "/y" + string(rune('a'+i%26)), Decision: "allow", Inspected: true})
	}
	out, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out.YAML), `"/p`); n > maxPatternsPerHost {
		t.Errorf("%d patterns written, bound %d", n, maxPatternsPerHost)
	}
	if !strings.Contains(strings.Join(out.Notes, "\n"), "x.example: more than 256 path patterns") {
		t.Errorf("no note about the bound: %v", out.Notes)
	}
}
