package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// The values below must never appear in an error, a String or a log line.
const (
	ghValue  = "ghp_TESTVALUEnotreal0123456789"
	llmValue = "sk-ant-TESTVALUE/with+special=chars&"
)

func testSet(t *testing.T) *Set {
	t.Helper()
	f, err := Parse("secrets.yaml", []byte(`
github:
  value_from: {env: GITHUB_TOKEN}
  placeholder_env: GITHUB_TOKEN
anthropic:
  value_from: {file: /run/secrets/anthropic}
  placeholder_env: ANTHROPIC_API_KEY
missing:
  value_from: {env: NOT_SET}
`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Resolve("secrets.yaml", f, func(k string) (string, bool) {
		if k == "GITHUB_TOKEN" {
			return ghValue, true
		}
		return "", false
	}, func(p string) ([]byte, error) {
		if p == "/run/secrets/anthropic" {
			return []byte(llmValue + "\n"), nil
		}
		return nil, os.ErrNotExist
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParse(t *testing.T) {
	f, err := Parse("s.yaml", []byte("version: 1\ngithub:\n  value_from: {env: GITHUB_TOKEN}\n  placeholder_env: GITHUB_TOKEN\ninline:\n  value: \"abc\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != 1 || len(f.Specs) != 2 || f.Specs[0].Env != "GITHUB_TOKEN" || f.Specs[0].PlaceholderEnv != "GITHUB_TOKEN" || *f.Specs[1].Value != "abc" || f.Specs[1].Line != 5 {
		t.Fatalf("got %+v", f)
	}
	for _, empty := range []string{"", "# nothing\n", "~\n"} {
		if f, err := Parse("s.yaml", []byte(empty)); err != nil || len(f.Specs) != 0 {
			t.Errorf("Parse(%q) = %+v, %v; want no secret", empty, f, err)
		}
	}
}

// TestParseErrors checks that each problem is reported with its line, all at once, and that no message
// quotes a value, even one written where a key or name goes.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
	}{
		{"two sources", "a:\n  value: x" + ghValue + "\n  value_from: {env: A}\n", []string{`s.yaml:1: secret "a": give exactly one of`}},
		{"no source", "a:\n  placeholder_env: A\n", []string{`s.yaml:1: secret "a": give exactly one`}},
		{"scalar instead of mapping", "a: " + ghValue + "\n", []string{`s.yaml:1: secret "a": want a mapping`}},
		{"unknown key", "a:\n  value: x\n  " + ghValue + ": 1\n", []string{`s.yaml:3: secret "a": unknown key (a secret has: value, value_from, placeholder_env`}},
		{"value as a name", ghValue + ":\n  value: x\n", []string{"s.yaml:1: a secret name is"}},
		{"env and file", "a:\n  value_from: {env: A, file: /x}\n", []string{"s.yaml:2: secret \"a\": value_from takes env or file, not both"}},
		{"unknown source", "a:\n  value_from: {vault: " + ghValue + "}\n", []string{"s.yaml:2: secret \"a\": value_from: unknown key"}},
		{"bad env name", "a:\n  value_from: {env: \"" + ghValue + "-x\"}\n", []string{"s.yaml:2: secret \"a\": value_from: env must be"}},
		{"bad placeholder_env", "a:\n  value: x\n  placeholder_env: \"1X\"\n", []string{"s.yaml:3: secret \"a\": placeholder_env must be"}},
		{"duplicate placeholder_env", "a:\n  value: x\n  placeholder_env: X\nb:\n  value: y\n  placeholder_env: X\n", []string{`s.yaml:4: secret "b": placeholder_env X is already the placeholder of secret "a"`}},
		{"newer version", "version: 2\n", []string{"s.yaml:1: version 2 is not supported (this build reads version 1)"}},
		{"not a mapping", "- " + ghValue + "\n", []string{"s.yaml:1: want a mapping"}},
		{"syntax", "a:\n  value: \"" + ghValue + "\\q\"\n", []string{"s.yaml:2:"}},
		{"several at once", "a: 1\nb:\n  nope: 2\n", []string{`s.yaml:1: secret "a"`, `s.yaml:3: secret "b": unknown key`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("s.yaml", []byte(tt.file))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\nwant %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "TESTVALUE") {
				t.Errorf("error quotes the value:\n%v", err)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	s := testSet(t)
	if v := s.Lookup("github").value; v != ghValue {
		t.Errorf("github = %q", v)
	}
	if v := s.Lookup("anthropic").value; v != llmValue {
		t.Errorf("anthropic = %q, want the file without its trailing newline", v)
	}
	miss := s.Lookup("missing")
	if miss.Err == nil || miss.Err.Error() != "environment variable NOT_SET is not set" {
		t.Errorf("missing.Err = %v", miss.Err)
	}
	if u := s.Unresolved(); len(u) != 1 || u[0].Name != "missing" {
		t.Errorf("Unresolved = %v", u)
	}

	for _, bad := range []string{"a\nb", "a\rb", "a\x00b", "a\n\n", "a\x1bb", "a\x7f"} {
		f, _ := Parse("s.yaml", []byte("x:\n  value_from: {file: /f}\n"))
		_, err := Resolve("s.yaml", f, nil, func(string) ([]byte, error) { return []byte(bad), nil })
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "s.yaml:1: secret \"x\": the value from file /f contains CR, LF, NUL or another control character") {
			t.Errorf("value %q: err = %v", bad, err)
		}
	}
	f, _ := Parse("s.yaml", []byte("x:\n  value_from: {file: /f}\n"))
	s, err := Resolve("s.yaml", f, nil, func(string) ([]byte, error) { return []byte("\n"), nil })
	if err != nil || s.Lookup("x").Err == nil || !strings.Contains(s.Lookup("x").Err.Error(), "is empty") {
		t.Errorf("empty value: %v, %v", s.Lookup("x"), err)
	}
}

func TestLoadPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no mode bits")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(path, []byte("a:\n  value: \""+ghValue+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o620} {
		os.Chmod(path, mode)
		_, err := Load(path)
		want := fmt.Sprintf("mode %04o: group or others may access the secrets file; run: chmod 600 %s", mode, path)
		if !errors.Is(err, ErrPermissions) || !strings.Contains(err.Error(), want) {
			t.Errorf("mode %o: err = %v, want %q", mode, err, want)
		}
	}
	os.Chmod(path, 0o600)
	s, err := Load(path)
	if err != nil || s.Lookup("a").value != ghValue {
		t.Fatalf("Load = %v, %v", s, err)
	}
}

// TestNeverPrinted formats secrets and sets every way the proxy might and looks for the value.
func TestNeverPrinted(t *testing.T) {
	s := testSet(t)
	var logged bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&logged, nil))
	for _, sec := range s.Secrets() {
		l.Info("x", "secret", sec)
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			if out := fmt.Sprintf(verb, sec); strings.Contains(out, "TESTVALUE") {
				t.Errorf("%s of %s: %s", verb, sec.Name, out)
			}
		}
	}
	if strings.Contains(logged.String(), "TESTVALUE") {
		t.Errorf("slog: %s", logged.String())
	}
}

func newReq(t *testing.T, target string, hdr ...string) *http.Request {
	t.Helper()
	r, err := http.NewRequest("GET", target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func mustTemplate(t *testing.T, s string) Template {
	t.Helper()
	tp, err := ParseTemplate(s)
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

func TestApply(t *testing.T) {
	s := testSet(t)
	gh := []string{"github"}
	tests := []struct {
		name       string
		req        *http.Request
		bound      []string
		inject     []Injection
		wantCode   string
		wantUsed   []string
		wantHeader http.Header
		wantQuery  string
	}{
		{name: "no placeholder, nothing bound", req: newReq(t, "http://h/p?q=1", "Accept", "x"),
			wantHeader: http.Header{"Accept": {"x"}}, wantQuery: "q=1"},
		{name: "header replaced", req: newReq(t, "http://h/", "Authorization", "token swarm-proxy-secret:github"), bound: gh,
			wantUsed: gh, wantHeader: http.Header{"Authorization": {"token " + ghValue}}},
		{name: "any case", req: newReq(t, "http://h/", "X-Key", "SWARM-PROXY-SECRET:GitHub,swarm-proxy-secret:github"), bound: gh,
			wantUsed: gh, wantHeader: http.Header{"X-Key": {ghValue + "," + ghValue}}},
		{name: "query raw", req: newReq(t, "http://h/?a=1&key=swarm-proxy-secret:anthropic&b=%7E"), bound: []string{"anthropic"},
			wantUsed: []string{"anthropic"}, wantHeader: http.Header{}, wantQuery: "a=1&key=" + url.QueryEscape(llmValue) + "&b=%7E"},
		{name: "query percent-encoded", req: newReq(t, "http://h/?key=pre+swarm-proxy-secret%3Agithub"), bound: gh,
			wantUsed: gh, wantHeader: http.Header{}, wantQuery: "key=pre+" + ghValue},
		{name: "inject replaces the agent's header", req: newReq(t, "http://h/", "Authorization", "Bearer stolen"), bound: gh,
			inject: []Injection{{"Authorization", mustTemplate(t, "Bearer {{secret:github}}")}}, wantUsed: gh,
			wantHeader: http.Header{"Authorization": {"Bearer " + ghValue}}},
		{name: "not bound: header", req: newReq(t, "http://h/", "X-Key", "swarm-proxy-secret:github"), wantCode: CodeNotBound},
		{name: "not bound: other secret", req: newReq(t, "http://h/", "X-Key", "swarm-proxy-secret:anthropic"), bound: gh, wantCode: CodeNotBound},
		{name: "not bound: unknown name", req: newReq(t, "http://h/", "X-Key", "swarm-proxy-secret:nope"), bound: gh, wantCode: CodeNotBound},
		{name: "not bound: empty name", req: newReq(t, "http://h/", "X-Key", "swarm-proxy-secret:"), bound: gh, wantCode: CodeNotBound},
		{name: "not bound: query", req: newReq(t, "http://h/?k=swarm-proxy-secret%3agithub"), wantCode: CodeNotBound},
		{name: "not bound: path", req: newReq(t, "http://h/x/swarm-proxy-secret%3Agithub"), wantCode: CodeNotBound},
		{name: "not bound: opaque path", req: func() *http.Request {
			r := newReq(t, "http://h/")
			r.URL.Opaque = "/x/swarm-proxy-secret%3agithub"
			return r
		}(), wantCode: CodeNotBound},
		{name: "not bound: user", req: newReq(t, "http://u:swarm-proxy-secret:github@h/"), wantCode: CodeNotBound},
		{name: "unavailable: placeholder", req: newReq(t, "http://h/", "X-Key", "swarm-proxy-secret:missing"), bound: []string{"missing"}, wantCode: CodeUnavailable},
		{name: "unavailable: not in file", req: newReq(t, "http://h/?k=swarm-proxy-secret:gone"), bound: []string{"gone"}, wantCode: CodeUnavailable},
		{name: "unavailable: inject", req: newReq(t, "http://h/"), bound: []string{"missing"},
			inject: []Injection{{"Authorization", mustTemplate(t, "Bearer {{secret:missing}}")}}, wantCode: CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			used, err := s.Apply(tt.req, tt.bound, tt.inject)
			if tt.wantCode != "" {
				var se *Error
				if !errors.As(err, &se) || se.Code != tt.wantCode {
					t.Fatalf("err = %v, want code %s", err, tt.wantCode)
				}
				if strings.Contains(err.Error(), "TESTVALUE") {
					t.Errorf("error quotes the value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(used, tt.wantUsed) {
				t.Errorf("used = %v, want %v", used, tt.wantUsed)
			}
			if !reflect.DeepEqual(tt.req.Header, tt.wantHeader) {
				t.Errorf("header = %v, want %v", tt.req.Header, tt.wantHeader)
			}
			if tt.req.URL.RawQuery != tt.wantQuery {
				t.Errorf("query = %q, want %q", tt.req.URL.RawQuery, tt.wantQuery)
			}
			if q, err := url.ParseQuery(tt.req.URL.RawQuery); err == nil && q.Get("key") != "" && !strings.Contains(q.Get("key"), "TESTVALUE") {
				t.Errorf("decoded key = %q", q.Get("key"))
			}
		})
	}
}

func TestApplyWithoutSecrets(t *testing.T) {
	var s *Set
	if _, err := s.Apply(newReq(t, "http://h/", "X", "swarm-proxy-secret:github"), []string{"github"}, nil); err == nil || !strings.Contains(err.Error(), "runs without --secrets") {
		t.Errorf("err = %v", err)
	}
	if used, err := s.Apply(newReq(t, "http://h/"), nil, nil); err != nil || used != nil {
		t.Errorf("Apply = %v, %v", used, err)
	}
}

func TestRedact(t *testing.T) {
	s := testSet(t)
	h := http.Header{
		"X-Echo":          {"Bearer " + ghValue, "fine"},
		"X-" + llmValue:   {"1"},
		"Content-Type":    {"text/plain"},
		"X-Partial-Value": {ghValue[:10]},
	}
	if !s.Redact(h) {
		t.Fatal("Redact reported no change")
	}
	want := http.Header{"X-Echo": {Redacted, "fine"}, "Content-Type": {"text/plain"}, "X-Partial-Value": {ghValue[:10]}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("h = %v, want %v", h, want)
	}
	if s.Redact(want) {
		t.Error("Redact changed a clean header")
	}
	msg := s.RedactString(`Get "http://h/?k=` + url.QueryEscape(llmValue) + `": token ` + ghValue)
	if strings.Contains(msg, "TESTVALUE") {
		t.Errorf("RedactString = %s", msg)
	}
}

func TestParseTemplate(t *testing.T) {
	tp, err := ParseTemplate("Bearer {{secret:github}} and {{ secret:llm }}")
	if err != nil {
		t.Fatal(err)
	}
	if got := tp.Secrets(); !reflect.DeepEqual(got, []string{"github", "llm"}) {
		t.Errorf("Secrets = %v", got)
	}
	if tp.Literal() != "Bearer  and " || tp.String() != "Bearer {{secret:github}} and {{ secret:llm }}" {
		t.Errorf("Literal = %q", tp.Literal())
	}
	for _, bad := range []string{"{{secret:github", "{{env:X}}", "{{secret:Bad Name}}", "swarm-proxy-secret:github"} {
		if _, err := ParseTemplate(bad); err == nil {
			t.Errorf("ParseTemplate(%q) accepted", bad)
		}
	}
}

// BenchmarkApply is the cost the proxy adds to a request without placeholders (the common case:
// every forwarded request is checked) and to one with a header and a query placeholder replaced and
// a header injected.
func BenchmarkApply(b *testing.B) {
	f, _ := Parse("s.yaml", []byte("github:\n  value: \"ghp_0123456789abcdef0123456789abcdef\"\n"))
	s, _ := Resolve("s.yaml", f, nil, nil)
	inject := []Injection{{Header: "Authorization", Value: func() Template { t, _ := ParseTemplate("Bearer {{secret:github}}"); return t }()}}
	hdr := http.Header{"User-Agent": {"curl/8.0"}, "Accept": {"*/*"}, "Accept-Encoding": {"gzip"}, "X-Request-Id": {"abc"}}
	for _, bc := range []struct {
		name, query, key string
		inject           []Injection
	}{
		{"clone-only", "", "", nil}, // the benchmark's own request copy, to subtract
		{"unbound-no-placeholder", "page=2&per_page=100", "", nil},
		{"inject", "page=2&per_page=100", "", inject},
		{"replaced-and-inject", "page=2&access_token=swarm-proxy-secret%3Agithub", "swarm-proxy-secret:github", inject},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := &http.Request{Header: hdr.Clone(), URL: &url.URL{Path: "/repos/o/r", RawQuery: bc.query}, Host: "api.github.com"}
				if bc.key != "" {
					r.Header.Set("X-Api-Key", bc.key)
				}
				if bc.name == "clone-only" {
					continue
				}
				if _, err := s.Apply(r, []string{"github"}, bc.inject); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
