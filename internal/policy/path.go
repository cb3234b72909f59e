package policy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrAmbiguousPath is wrapped by the errors of CheckPath: the path could be read two ways (by the
// rule and by the server), so it is refused rather than normalised.
var ErrAmbiguousPath = errors.New("ambiguous path")

// CheckPath checks a request's path as sent on the wire (escaped, without the query) for forms that a
// server could read differently from a rule: "." and ".." segments (also before a ";" parameter),
// empty segments ("//"), percent-encoded "/", "\", "." or unreserved characters, malformed escapes, a
// backslash, a NUL or another control character (raw or encoded), and any character that RFC 3986
// does not allow unencoded in a path. A path that passes is one that every server reads the same
// way: its segments are split only at "/" and each decodes to one string.
func CheckPath(raw string) error {
	if raw == "" || raw[0] != '/' {
		return ambiguous(raw, "it does not start with /")
	}
	start := 1
	for i := 1; i <= len(raw); i++ {
		if i < len(raw) && raw[i] != '/' {
			continue
		}
		seg := raw[start:i]
		last := i == len(raw)
		if seg == "" && !last {
			return ambiguous(raw, "it has an empty segment (//)")
		}
		if why := segmentProblem(seg); why != "" {
			return ambiguous(raw, why)
		}
		start = i + 1
	}
	return nil
}

// segmentProblem says what makes one segment ambiguous, or returns "".
func segmentProblem(seg string) string {
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c == '%':
			if i+2 >= len(seg) {
				return "it has a malformed percent escape"
			}
			v, ok := unhex2(seg[i+1], seg[i+2])
			if !ok {
				return "it has a malformed percent escape"
			}
			switch {
			case v == '/':
				return "it has an encoded / (%2F)"
			case v == '\\':
				return "it has an encoded \\ (%5C)"
			case v == '.':
				return "it has an encoded . (%2E)"
			case v < 0x20 || v == 0x7f:
				return fmt.Sprintf("it has an encoded control character (%%%02X)", v)
			case unreserved(v):
				return fmt.Sprintf("it has an encoded unreserved character %q (%s)", v, seg[i:i+3])
			}
			i += 2
		case c == '\\':
			return "it has a backslash"
		case c < 0x20 || c == 0x7f:
			return fmt.Sprintf("it has a control character (0x%02X)", c)
		case !pchar(c):
			return fmt.Sprintf("it has %q, which a path must percent-encode", c)
		}
	}
	// "..;x" (or "..%3Bx") is ".." to servers that strip path parameters.
	if name, _, _ := strings.Cut(decodeSegment(seg), ";"); name == "." || name == ".." {
		return fmt.Sprintf("it has a %q segment", seg)
	}
	return ""
}

func ambiguous(raw, why string) error {
	if len(raw) > 200 {
		raw = raw[:200] + "..."
	}
	return fmt.Errorf("%w %q: %s", ErrAmbiguousPath, raw, why)
}

// unreserved reports whether c is an RFC 3986 unreserved character, which is never percent-encoded
// by a correct client.
func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// pchar reports whether c may appear unencoded in a path segment (RFC 3986 pchar, without "%").
func pchar(c byte) bool {
	return unreserved(c) || strings.IndexByte("!$&'()*+,;=:@", c) >= 0
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodeSegment percent-decodes a segment that CheckPath accepted (or a pattern literal).
func decodeSegment(seg string) string {
	if strings.IndexByte(seg, '%') < 0 {
		return seg
	}
	var b strings.Builder
	b.Grow(len(seg))
	for i := 0; i < len(seg); i++ {
		if seg[i] == '%' && i+2 < len(seg) {
			if v, ok := unhex2(seg[i+1], seg[i+2]); ok {
				b.WriteByte(v)
				i += 2
				continue
			}
		}
		b.WriteByte(seg[i])
	}
	return b.String()
}

// PathOf returns the path of a request target as sent on the wire: the part of an origin-form
// ("/a/b?q") or absolute-form ("http://host/a/b?q") target before the query, unescaped as it came.
// An absolute-form target without a path has the path "/"; "*" (OPTIONS *) is returned as it is.
func PathOf(requestURI string) string {
	p := requestURI
	if !strings.HasPrefix(p, "/") {
		if i := strings.Index(p, "://"); i >= 0 {
			rest := p[i+3:]
			j := strings.IndexAny(rest, "/?#")
			switch {
			case j < 0:
				return "/"
			case rest[j] != '/':
				return "/"
			}
			p = rest[j:]
		}
	}
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return p
}

// segKind is the kind of one segment of a path pattern.
type segKind uint8

const (
	segLiteral segKind = iota
	segOne             // "*": exactly one non-empty segment
	segAny             // "**": any number of segments, none included
)

type patternSeg struct {
	kind segKind
	lit  string // decoded, for segLiteral
}

// PathPattern is a parsed path pattern: "/" separated segments, each a literal, "*" (one segment) or
// "**" (any number of segments, including none). Literals are compared with the request's segments
// after percent-decoding both.
type PathPattern struct {
	src  string
	segs []patternSeg
}

// String returns the pattern as written.
func (p PathPattern) String() string { return p.src }

// ParsePathPattern parses a pattern such as "/repos/myorg/**" or "/repos/*/issues".
func ParsePathPattern(s string) (PathPattern, error) {
	if s == "" || s[0] != '/' {
		return PathPattern{}, fmt.Errorf("path %q must start with /", s)
	}
	p := PathPattern{src: s}
	parts := strings.Split(s[1:], "/")
	for i, part := range parts {
		switch {
		case part == "**":
			p.segs = append(p.segs, patternSeg{kind: segAny})
		case part == "*":
			p.segs = append(p.segs, patternSeg{kind: segOne})
		case strings.Contains(part, "*"):
			return PathPattern{}, fmt.Errorf("path %q: a wildcard must be a whole segment (\"*\" or \"**\"), not part of %q", s, part)
		case part == "" && i < len(parts)-1:
			return PathPattern{}, fmt.Errorf("path %q has an empty segment (//), which requests may not have", s)
		default:
			if part == "" && len(parts) == 1 {
				// "/" alone: the root, no segments.
				return p, nil
			}
			if !utf8.ValidString(part) {
				return PathPattern{}, fmt.Errorf("path %q is not valid UTF-8", s)
			}
			enc := encodeLiteral(part)
			if why := segmentProblem(enc); why != "" {
				return PathPattern{}, fmt.Errorf("path %q: %s, which a request's path may not have", s, why)
			}
			p.segs = append(p.segs, patternSeg{kind: segLiteral, lit: decodeSegment(enc)})
		}
	}
	return p, nil
}

// encodeLiteral percent-encodes the printable characters of a pattern segment that a request must
// encode (a space, "€", "{"), so that a pattern may be written as text.
func encodeLiteral(seg string) string {
	var b strings.Builder
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if c >= 0x80 || c == ' ' || c > ' ' && c < 0x7f && c != '%' && c != '\\' && !pchar(c) {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Match reports whether the request path raw (as sent, accepted by CheckPath) matches p.
func (p PathPattern) Match(raw string) bool {
	if raw == "" || raw[0] != '/' {
		return false
	}
	var segs []string
	if raw != "/" {
		segs = strings.Split(raw[1:], "/")
	}
	return matchSegs(p.segs, segs)
}

// matchSegs is wildcard matching over segments with backtracking to the last "**" only, which is
// linear in practice and O(len(pat)·len(segs)) at worst.
func matchSegs(pat []patternSeg, segs []string) bool {
	pi, si := 0, 0
	starPi, starSi := -1, 0
	for si < len(segs) {
		if pi < len(pat) {
			switch ps := pat[pi]; ps.kind {
			case segAny:
				starPi, starSi = pi, si
				pi++
				continue
			case segOne:
				if segs[si] != "" {
					pi++
					si++
					continue
				}
			case segLiteral:
				if ps.lit == decodeSegment(segs[si]) {
					pi++
					si++
					continue
				}
			}
		}
		if starPi < 0 {
			return false
		}
		starSi++
		pi, si = starPi+1, starSi
	}
	for pi < len(pat) && pat[pi].kind == segAny {
		pi++
	}
	return pi == len(pat)
}
