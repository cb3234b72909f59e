package secrets

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Codes of Apply's refusals, as the proxy puts them in its code= header and the access log.
const (
	// CodeNotBound: a placeholder of a secret that the deciding rule does not list (403).
	CodeNotBound = "secret_not_bound"
	// CodeUnavailable: the rule needs a secret whose value could not be resolved (502).
	CodeUnavailable = "secret_unavailable"
)

// Redacted replaces a header value that held a secret's value.
const Redacted = "[redacted]"

// Error is a request refused by Apply. It names the secret and where its placeholder was, never a value.
type Error struct {
	Code   string // CodeNotBound or CodeUnavailable
	Secret string // the secret's name as the placeholder or the rule gives it
	Reason string // one sentence for the agent and the log
}

func (e *Error) Error() string { return e.Code + ": " + e.Reason }

// Apply binds r to the rule that allowed it, before r is forwarded. bound lists the secrets whose
// placeholders the rule lets through (its "secrets"), inject the headers it sets.
//
// A placeholder anywhere in r's target, query or headers that names a secret outside bound is refused
// with CodeNotBound, so that an agent cannot steer a secret to a host of its choosing. The others are
// replaced with their values in header values and query parameters; then each injected header is set,
// replacing what the agent sent. A secret that is needed but has no value is refused with
// CodeUnavailable: the request must not go out with a placeholder or without its header. On an error r
// is left part-way and must not be sent. used lists the names of the secrets put in r, sorted.
//
// Bodies and trailer values are not read or rewritten; the path and trailer names are checked but
// not rewritten.
func (s *Set) Apply(r *http.Request, bound []string, inject []Injection) (used []string, err error) {
	if err := checkBound(r, bound); err != nil {
		return nil, err
	}
	value := func(name string) (string, error) {
		sec := s.Lookup(name)
		switch {
		case sec == nil:
			return "", &Error{CodeUnavailable, name, fmt.Sprintf("secret %q is not in the secrets file%s", name, s.sourceHint())}
		case sec.Err != nil:
			return "", &Error{CodeUnavailable, name, fmt.Sprintf("secret %q is unavailable: %v", name, sec.Err)}
		}
		if !slices.Contains(used, name) {
			used = append(used, name)
		}
		return sec.value, nil
	}
	var failed error
	sub := func(name string) string {
		v, err := value(name)
		if err != nil && failed == nil {
			failed = err
		}
		return v
	}
	for k, vs := range r.Header {
		for i, v := range vs {
			if contains(v) {
				r.Header[k][i] = replace(v, sub)
			}
		}
	}
	if r.URL != nil && (contains(r.URL.RawQuery) || queryHasEncoded(r)) {
		r.URL.RawQuery = replaceQuery(r.URL.RawQuery, func(name string) string { return url.QueryEscape(sub(name)) })
	}
	if failed != nil {
		return nil, failed
	}
	for _, in := range inject {
		var b strings.Builder
		for _, p := range in.Value.parts {
			if p.secret == "" {
				b.WriteString(p.text)
				continue
			}
			v, err := value(p.secret)
			if err != nil {
				return nil, err
			}
			b.WriteString(v)
		}
		r.Header[in.Header] = []string{b.String()}
	}
	slices.Sort(used)
	return used, nil
}

func (s *Set) sourceHint() string {
	if s == nil {
		return " (the proxy runs without --secrets)"
	}
	return " " + s.Source
}

// checkBound refuses a placeholder of a secret outside bound anywhere in r's target and headers,
// percent-decoded or not.
func checkBound(r *http.Request, bound []string) error {
	if err := unbound(r.Host, bound, "the host", ""); err != nil {
		return err
	}
	if u := r.URL; u != nil {
		pass, _ := u.User.Password()
		for _, part := range [...]struct{ where, s string }{
			{"the URL's host", u.Host}, {"the URL's user", u.User.Username()}, {"the URL's user", pass}, {"the path", u.Path},
			{"the path", u.RawPath}, {"the path", u.Opaque}, {"the query", u.RawQuery}, {"the fragment", u.Fragment},
		} {
			if err := unbound(part.s, bound, part.where, ""); err != nil {
				return err
			}
			if !strings.Contains(part.s, "%") {
				continue
			}
			if dec, err := url.PathUnescape(part.s); err == nil && dec != part.s {
				if err := unbound(dec, bound, part.where, ""); err != nil {
					return err
				}
			}
		}
		if strings.Contains(u.RawQuery, "%") {
			for _, piece := range strings.Split(u.RawQuery, "&") {
				if dec, err := url.QueryUnescape(piece); err == nil && dec != piece {
					if err := unbound(dec, bound, "the query", ""); err != nil {
						return err
					}
				}
			}
		}
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if err := unbound(v, bound, "header ", k); err != nil {
				return err
			}
		}
	}
	for k := range r.Trailer {
		if err := unbound(k, bound, "a trailer name", ""); err != nil {
			return err
		}
	}
	return nil
}

// unbound refuses the first placeholder in s of a secret outside bound; where+detail says where s is.
func unbound(s string, bound []string, where, detail string) error {
	for i := 0; ; {
		sp, ok := next(s, i)
		if !ok {
			return nil
		}
		if sp.name == "" || !slices.Contains(bound, sp.name) {
			name := truncate(sp.name)
			return &Error{CodeNotBound, name, fmt.Sprintf("a placeholder of secret %q in %s%s is not bound to this request's rule; only a rule that lists the secret under secrets: may carry it", name, where, detail)}
		}
		i = sp.end
	}
}

// queryHasEncoded reports whether a query parameter holds a placeholder only once percent-decoded
// (Python's urlencode writes the ':' as %3A).
func queryHasEncoded(r *http.Request) bool {
	if r.URL == nil || !strings.Contains(r.URL.RawQuery, "%") {
		return false
	}
	for _, piece := range strings.Split(r.URL.RawQuery, "&") {
		if dec, err := url.QueryUnescape(piece); err == nil && contains(dec) {
			return true
		}
	}
	return false
}

// replaceQuery replaces the placeholders in each key and value of a raw query with escaped(name),
// already query-escaped. Parts without a placeholder keep their bytes; a part with one is decoded,
// rewritten and encoded again.
func replaceQuery(raw string, escaped func(name string) string) string {
	pieces := strings.Split(raw, "&")
	for i, piece := range pieces {
		k, v, hasEq := strings.Cut(piece, "=")
		k, v = replaceQueryPart(k, escaped), replaceQueryPart(v, escaped)
		if hasEq {
			pieces[i] = k + "=" + v
		} else {
			pieces[i] = k
		}
	}
	return strings.Join(pieces, "&")
}

func replaceQueryPart(part string, escaped func(name string) string) string {
	dec, err := url.QueryUnescape(part)
	if err != nil || !contains(dec) {
		// Undecodable: the placeholder, if any, is in the raw text, and the value goes in escaped.
		return replace(part, escaped)
	}
	// Split the decoded text around its placeholders, escape the text, and put the escaped values in.
	var b strings.Builder
	last := 0
	scan(dec, func(sp span) bool {
		b.WriteString(url.QueryEscape(dec[last:sp.start]))
		b.WriteString(escaped(sp.name))
		last = sp.end
		return true
	})
	b.WriteString(url.QueryEscape(dec[last:]))
	return b.String()
}

// Redact replaces with Redacted every value in h that contains the value of one of s's secrets, and
// deletes every header whose name contains one. It reports whether it changed h.
func (s *Set) Redact(h http.Header) bool {
	if s == nil || len(h) == 0 {
		return false
	}
	changed := false
	for _, sec := range s.secrets {
		if sec.value == "" {
			continue
		}
		for k, vs := range h {
			if strings.Contains(k, sec.value) {
				delete(h, k)
				changed = true
				continue
			}
			for i, v := range vs {
				if strings.Contains(v, sec.value) {
					vs[i] = Redacted
					changed = true
				}
			}
		}
	}
	return changed
}

// RedactString returns str with every secret's value replaced by Redacted, for text that may quote a
// rewritten request (a transport error names the URL, query included).
func (s *Set) RedactString(str string) string {
	if s == nil {
		return str
	}
	for _, sec := range s.secrets {
		if sec.value != "" {
			str = strings.ReplaceAll(str, sec.value, Redacted)
			if esc := url.QueryEscape(sec.value); esc != sec.value {
				str = strings.ReplaceAll(str, esc, Redacted)
			}
		}
	}
	return str
}
