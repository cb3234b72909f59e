package secrets

import (
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// asciiLower lowers ASCII letters only, as the scanner does.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = lowerASCII(c)
	}
	return string(b)
}

// FuzzScan checks the placeholder scanner against strings.Index on an ASCII-lowered copy: it finds a
// placeholder exactly when one is there, its spans are ordered and each is the prefix plus a name, and
// replace keeps every byte outside the spans.
func FuzzScan(f *testing.F) {
	for _, s := range []string{"", "swarm-proxy-secret:github", "Bearer SWARM-PROXY-SECRET:GitHub,x", "swarm-proxy-secret:", "swarm-proxy-secret:swarm-proxy-secret:a",
		"swarm-proxy-secret", "ſwarm-proxy-secret:a", "xx swarm-proxy-secret:a-b_c.d swarm-proxy-secret:e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lower := asciiLower(s)
		var spans []span
		scan(s, func(sp span) bool { spans = append(spans, sp); return true })
		if (len(spans) > 0) != strings.Contains(lower, Prefix) || contains(s) != (len(spans) > 0) {
			t.Fatalf("%q: spans %v, but Contains = %v", s, spans, strings.Contains(lower, Prefix))
		}
		prev := 0
		var rebuilt strings.Builder
		for _, sp := range spans {
			if sp.start < prev || sp.end > len(s) || lower[sp.start:sp.start+len(Prefix)] != Prefix {
				t.Fatalf("%q: bad span %+v", s, sp)
			}
			if strings.Contains(lower[prev:sp.start], Prefix) {
				t.Fatalf("%q: missed a placeholder before %+v", s, sp)
			}
			name := s[sp.start+len(Prefix) : sp.end]
			if asciiLower(name) != sp.name || (sp.end < len(s) && isNameByte(s[sp.end])) {
				t.Fatalf("%q: span %+v does not end the name", s, sp)
			}
			rebuilt.WriteString(s[prev:sp.start])
			rebuilt.WriteString("<" + sp.name + ">")
			prev = sp.end
		}
		rebuilt.WriteString(s[prev:])
		if got := replace(s, func(n string) string { return "<" + n + ">" }); got != rebuilt.String() {
			t.Fatalf("replace(%q) = %q, want %q", s, got, rebuilt.String())
		}
	})
}

// FuzzApply sends a header value and a raw query through Apply with only github bound: a placeholder
// of any other name must be refused; otherwise the query must decode to the same parameters with the
// placeholders replaced, text without placeholders must keep its bytes, and no error may quote a value.
func FuzzApply(f *testing.F) {
	f.Add("token swarm-proxy-secret:github", "a=1&k=swarm-proxy-secret%3Agithub")
	f.Add("swarm-proxy-secret:anthropic", "")
	f.Add("", "k=swarm-proxy-secret:github&k=%zz swarm-proxy-secret:github")
	f.Add("x", "swarm-proxy-secret%3AGITHUB=1&b=%7E")
	f.Fuzz(func(t *testing.T, hv, rawQuery string) {
		s := testSet(t)
		r := &http.Request{Header: http.Header{"X-Key": {hv}}, URL: &url.URL{Scheme: "http", Host: "h", Path: "/", RawQuery: rawQuery}}
		unbound := false
		note := func(str string) {
			scan(str, func(sp span) bool { unbound = unbound || sp.name != "github"; return true })
		}
		note(hv)
		note(rawQuery)
		for _, piece := range strings.Split(rawQuery, "&") {
			if dec, err := url.QueryUnescape(piece); err == nil {
				note(dec)
			}
		}
		_, beforeErr := url.ParseQuery(rawQuery)
		used, err := s.Apply(r, []string{"github"}, nil)
		var se *Error
		switch {
		case unbound:
			if !errors.As(err, &se) || se.Code != CodeNotBound {
				t.Fatalf("header %q query %q: err = %v, want %s", hv, rawQuery, err, CodeNotBound)
			}
			return
		case err != nil:
			t.Fatalf("header %q query %q: %v", hv, rawQuery, err)
		}
		if strings.Contains(err2s(err), "TESTVALUE") {
			t.Fatal("error quotes a value")
		}
		if want := replace(hv, func(string) string { return ghValue }); r.Header.Get("X-Key") != want {
			t.Fatalf("header %q -> %q", hv, r.Header.Get("X-Key"))
		}
		if !contains(rawQuery) && len(used) == 0 && r.URL.RawQuery != rawQuery {
			if _, err := url.QueryUnescape(rawQuery); err != nil || !strings.Contains(rawQuery, "%") {
				t.Fatalf("query without placeholders changed: %q -> %q", rawQuery, r.URL.RawQuery)
			}
		}
		after, afterErr := url.ParseQuery(r.URL.RawQuery)
		if beforeErr == nil {
			want := url.Values{}
			for _, piece := range strings.Split(rawQuery, "&") {
				if piece == "" {
					continue
				}
				k, v, _ := strings.Cut(piece, "=")
				k, _ = url.QueryUnescape(k)
				v, _ = url.QueryUnescape(v)
				sub := func(string) string { return ghValue }
				want.Add(replace(k, sub), replace(v, sub))
			}
			if afterErr != nil || !reflect.DeepEqual(want, after) {
				t.Fatalf("query %q -> %q: parameters %v, want %v (%v)", rawQuery, r.URL.RawQuery, after, want, afterErr)
			}
		}
	})
}

func err2s(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
