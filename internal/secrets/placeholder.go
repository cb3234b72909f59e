package secrets

import (
	"fmt"
	"strings"
)

// Prefix starts every placeholder: the agent holds Prefix+NAME where its tools need a secret.
const Prefix = "swarm-proxy-secret:"

// Placeholder returns the placeholder of the secret called name.
func Placeholder(name string) string { return Prefix + name }

// span is one placeholder found in a string: s[start:end], naming secret name.
type span struct {
	start, end int
	name       string
}

// scan calls fn for each placeholder in s, left to right, until fn returns false. The prefix is
// matched without regard to ASCII case and the name is the longest run of name characters after it,
// lower-cased, so that "SWARM-PROXY-SECRET:GitHub" is the placeholder of github: a request cannot slip
// a placeholder past the binding check by changing its case. The name may be empty or too long; such
// a placeholder names no secret and is never bound.
func scan(s string, fn func(span) bool) {
	for i := 0; ; {
		sp, ok := next(s, i)
		if !ok || !fn(sp) {
			return
		}
		i = sp.end
	}
}

// next returns the first placeholder in s at or after from.
func next(s string, from int) (span, bool) {
	j := indexFold(s[from:], Prefix)
	if j < 0 {
		return span{}, false
	}
	start := from + j
	end := start + len(Prefix)
	for end < len(s) && isNameByte(s[end]) {
		end++
	}
	return span{start, end, strings.ToLower(s[start+len(Prefix) : end])}, true
}

// contains reports whether s holds a placeholder.
func contains(s string) bool { return indexFold(s, Prefix) >= 0 }

func isNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// indexFold is strings.Index with ASCII letters matched in either case. Only ASCII is folded: no
// other byte sequence is taken for the prefix.
func indexFold(s, lowerPrefix string) int {
	for i := 0; i+len(lowerPrefix) <= len(s); i++ {
		if lowerASCII(s[i]) != lowerPrefix[0] {
			continue
		}
		k := 1
		for k < len(lowerPrefix) && lowerASCII(s[i+k]) == lowerPrefix[k] {
			k++
		}
		if k == len(lowerPrefix) {
			return i
		}
	}
	return -1
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// replace returns s with each placeholder replaced by value(name). It is one pass: text that a value
// forms with its neighbours is not scanned again.
func replace(s string, value func(name string) string) string {
	var b strings.Builder
	last := 0
	scan(s, func(sp span) bool {
		if b.Len() == 0 {
			b.Grow(len(s) + 64)
		}
		b.WriteString(s[last:sp.start])
		b.WriteString(value(sp.name))
		last = sp.end
		return true
	})
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// Template is a parsed injected header value such as "Bearer {{secret:github}}": literal text and
// references to secrets, in order.
type Template struct {
	raw   string
	parts []templatePart
}

type templatePart struct {
	text   string // literal text when secret is ""
	secret string
}

// ParseTemplate parses s, in which {{secret:NAME}} stands for the value of secret NAME.
func ParseTemplate(s string) (Template, error) {
	t := Template{raw: s}
	rest := s
	for rest != "" {
		i := strings.Index(rest, "{{")
		if i < 0 {
			t.parts = append(t.parts, templatePart{text: rest})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, templatePart{text: rest[:i]})
		}
		j := strings.Index(rest[i:], "}}")
		if j < 0 {
			return Template{}, fmt.Errorf("%q: \"{{\" without \"}}\"", s)
		}
		ref := strings.TrimSpace(rest[i+2 : i+j])
		name, ok := strings.CutPrefix(ref, "secret:")
		if !ok {
			return Template{}, fmt.Errorf("%q: {{%s}} is not {{secret:NAME}}", s, ref)
		}
		name = strings.TrimSpace(name)
		if err := ValidName(name); err != nil {
			return Template{}, fmt.Errorf("%q: %w", s, err)
		}
		t.parts = append(t.parts, templatePart{secret: name})
		rest = rest[i+j+2:]
	}
	if contains(s) {
		return Template{}, fmt.Errorf("%q: write {{secret:NAME}}, not a placeholder", s)
	}
	return t, nil
}

// String returns the template as written.
func (t Template) String() string { return t.raw }

// Secrets returns the names of the secrets t refers to, in order, with repeats.
func (t Template) Secrets() []string {
	var names []string
	for _, p := range t.parts {
		if p.secret != "" {
			names = append(names, p.secret)
		}
	}
	return names
}

// Literal returns the text of t without its references, for checking what characters it holds.
func (t Template) Literal() string {
	var b strings.Builder
	for _, p := range t.parts {
		b.WriteString(p.text)
	}
	return b.String()
}

// Injection is one header that a rule sets on every request it allows, replacing what the agent sent.
type Injection struct {
	Header string // canonical header name
	Value  Template
}
