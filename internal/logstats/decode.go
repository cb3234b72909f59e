package logstats

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Entry is the part of an access-log record (accesslog.Record) that the reports use. Its strings are
// interned by the reader, so keeping them costs nothing per line.
type Entry struct {
	Time     time.Time
	Client   string
	Session  string
	Method   string
	Host     string
	Port     int
	Decision string // accesslog.DecisionAllow or accesslog.DecisionDeny
	Error    string // failure kind: "private_address", "no_rule_matched", "resolve", ... or ""
	Rule     string // the rule that decided, "" when none did
	Upstream string // the address the proxy dialed (host:port), when it dialed one
	BytesIn  int64
	BytesOut int64
	// Path is the request's path (plain HTTP and inspected requests); Inspected marks a request
	// decided by method and path under a rule that inspects.
	Path      string
	Inspected bool
}

// Blocked reports whether the proxy refused the request.
func (e *Entry) Blocked() bool { return e.Decision == accesslog.DecisionDeny }

// ErrorPrivateAddress is the failure kind logged when a target was refused because it is, or
// resolved to, a private, loopback, link-local or metadata address.
const ErrorPrivateAddress = string(policy.CodeSpecialAddr)

// ErrorDeniedByRule is the failure kind logged when a deny rule refused a target.
const ErrorDeniedByRule = string(policy.CodeDeniedByRule)

// errSyntax is wrapped by every decoding error.
var errSyntax = errors.New("not a JSON access-log record")

// maxInterned bounds the intern table so that a log with endless distinct values (clients, hosts)
// cannot grow memory without limit; the table is simply started afresh when it is full.
const maxInterned = 1 << 16

// decoder turns one JSON line into an Entry without encoding/json: it walks the object once,
// extracts the fields the reports need and skips the others. Strings without escapes are
// interned straight from the line buffer, so a typical line allocates nothing.
type decoder struct {
	strs map[string]string
	// The seconds part of the last timestamp, to skip the date arithmetic for lines of the same second.
	lastSec  [19]byte
	lastBase time.Time
}

func newDecoder() *decoder { return &decoder{strs: make(map[string]string)} }

func (d *decoder) intern(b []byte) string {
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	if len(d.strs) >= maxInterned {
		clear(d.strs)
	}
	s := string(b)
	d.strs[s] = s
	return s
}

// decode parses line (without its newline) into e. It requires a JSON object with a timestamp and a
// decision; fields it does not know are skipped, as encoding/json would.
func (d *decoder) decode(line []byte, e *Entry) error {
	*e = Entry{}
	i := skipWS(line, 0)
	if i >= len(line) || line[i] != '{' {
		return fmt.Errorf("%w: does not start with {", errSyntax)
	}
	i = skipWS(line, i+1)
	var haveTime bool
	if i < len(line) && line[i] == '}' {
		i++
	} else {
		for {
			if i >= len(line) || line[i] != '"' {
				return fmt.Errorf("%w: want a field name at byte %d", errSyntax, i)
			}
			key, j, err := d.str(line, i)
			if err != nil {
				return err
			}
			i = skipWS(line, j)
			if i >= len(line) || line[i] != ':' {
				return fmt.Errorf("%w: want : after %q", errSyntax, key)
			}
			i = skipWS(line, i+1)
			switch string(key) {
			case accesslog.FieldTimestamp:
				var v []byte
				if v, i, err = d.str(line, i); err != nil {
					return err
				}
				if e.Time, err = d.parseTime(v); err != nil {
					return err
				}
				haveTime = true
			case accesslog.FieldClient:
				i, err = d.strField(line, i, &e.Client)
			case accesslog.FieldSession:
				i, err = d.strField(line, i, &e.Session)
			case accesslog.FieldMethod:
				i, err = d.strField(line, i, &e.Method)
			case accesslog.FieldHost:
				i, err = d.strField(line, i, &e.Host)
			case accesslog.FieldDecision:
				i, err = d.strField(line, i, &e.Decision)
			case accesslog.FieldError:
				i, err = d.strField(line, i, &e.Error)
			case accesslog.FieldRule:
				i, err = d.strField(line, i, &e.Rule)
			case accesslog.FieldUpstream:
				i, err = d.strField(line, i, &e.Upstream)
			case accesslog.FieldPath:
				i, err = d.strField(line, i, &e.Path)
			case accesslog.FieldInspected:
				e.Inspected, i, err = boolValue(line, i)
			case accesslog.FieldPort:
				var n int64
				n, i, err = intValue(line, i)
				e.Port = int(n)
				if err == nil && (n < 0 || n > 65535) {
					err = fmt.Errorf("%w: port %d out of range", errSyntax, n)
				}
			case accesslog.FieldBytesIn:
				e.BytesIn, i, err = intValue(line, i)
			case accesslog.FieldBytesOut:
				e.BytesOut, i, err = intValue(line, i)
			default:
				i, err = skipValue(line, i, 0)
			}
			if err != nil {
				return err
			}
			i = skipWS(line, i)
			if i < len(line) && line[i] == ',' {
				i = skipWS(line, i+1)
				continue
			}
			if i < len(line) && line[i] == '}' {
				i++
				break
			}
			return fmt.Errorf("%w: want , or } at byte %d (truncated line?)", errSyntax, i)
		}
	}
	if i = skipWS(line, i); i != len(line) {
		return fmt.Errorf("%w: data after the object at byte %d", errSyntax, i)
	}
	switch {
	case !haveTime:
		return fmt.Errorf("%w: no %s", errSyntax, accesslog.FieldTimestamp)
	case e.Decision != accesslog.DecisionAllow && e.Decision != accesslog.DecisionDeny:
		return fmt.Errorf("%w: %s is %q, want allow or deny", errSyntax, accesslog.FieldDecision, e.Decision)
	}
	return nil
}

// strField reads a string (or null) at line[i] into *dst.
func (d *decoder) strField(line []byte, i int, dst *string) (int, error) {
	if isNull(line, i) {
		*dst = ""
		return i + 4, nil
	}
	v, j, err := d.str(line, i)
	if err != nil {
		return 0, err
	}
	*dst = d.intern(v)
	return j, nil
}

// str reads the JSON string starting at line[i] and returns its contents and the index after the
// closing quote. Contents without escapes alias line; escaped ones are decoded into a new slice.
func (d *decoder) str(line []byte, i int) ([]byte, int, error) {
	if i >= len(line) || line[i] != '"' {
		return nil, 0, fmt.Errorf("%w: want a string at byte %d", errSyntax, i)
	}
	end, escaped, err := stringEnd(line, i)
	if err != nil {
		return nil, 0, err
	}
	if !escaped {
		return line[i+1 : end], end + 1, nil
	}
	var s string
	if err := json.Unmarshal(line[i:end+1], &s); err != nil {
		return nil, 0, fmt.Errorf("%w: bad string at byte %d", errSyntax, i)
	}
	return []byte(s), end + 1, nil
}

// stringEnd returns the index of the quote that closes the string opening at line[i], and whether
// the string holds escapes. Control characters are rejected, as JSON requires.
func stringEnd(line []byte, i int) (end int, escaped bool, err error) {
	for j := i + 1; j <= len(line); {
		k := bytes.IndexByte(line[j:], '"')
		if k < 0 {
			break
		}
		seg := line[j : j+k]
		if hasControl(seg) {
			return 0, false, fmt.Errorf("%w: control character in string", errSyntax)
		}
		b := bytes.IndexByte(seg, '\\')
		if b < 0 {
			return j + k, escaped, nil
		}
		// An escape before the quote found: that quote may be the escaped character. Go on after
		// the escaped character.
		escaped = true
		j += b + 2
	}
	return 0, false, fmt.Errorf("%w: unterminated string (truncated line?)", errSyntax)
}

// hasControl reports whether b holds a byte below 0x20, eight bytes at a time: a byte below 0x20
// borrows when 0x20 is subtracted from it and has its high bit clear.
func hasControl(b []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		if (x-0x20*ones)&^x&highs != 0 {
			return true
		}
		b = b[8:]
	}
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// boolValue reads a JSON boolean (or null, as false) at line[i].
func boolValue(line []byte, i int) (bool, int, error) {
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(line)-i >= len(lit) && string(line[i:i+len(lit)]) == lit {
			return lit == "true", i + len(lit), nil
		}
	}
	return false, 0, fmt.Errorf("%w: want true or false at byte %d", errSyntax, i)
}

func isNull(line []byte, i int) bool {
	return len(line)-i >= 4 && string(line[i:i+4]) == "null"
}

// intValue reads a JSON integer (or null, as 0) at line[i].
func intValue(line []byte, i int) (int64, int, error) {
	if isNull(line, i) {
		return 0, i + 4, nil
	}
	j := i
	neg := false
	if j < len(line) && line[j] == '-' {
		neg = true
		j++
	}
	start := j
	var n int64
	for j < len(line) && line[j] >= '0' && line[j] <= '9' {
		if n > (1<<62)/10 {
			return 0, 0, fmt.Errorf("%w: number too large at byte %d", errSyntax, i)
		}
		n = n*10 + int64(line[j]-'0')
		j++
	}
	switch {
	case j == start:
		return 0, 0, fmt.Errorf("%w: want an integer at byte %d", errSyntax, i)
	case line[start] == '0' && j-start > 1:
		return 0, 0, fmt.Errorf("%w: leading zero at byte %d", errSyntax, i)
	case j < len(line) && (line[j] == '.' || line[j] == 'e' || line[j] == 'E'):
		return 0, 0, fmt.Errorf("%w: want an integer at byte %d", errSyntax, i)
	}
	if neg {
		n = -n
	}
	return n, j, nil
}

// skipValue returns the index after the JSON value at line[i]. Scalars are checked only as far as
// finding where they end; nested values are walked with their strings.
func skipValue(line []byte, i, depth int) (int, error) {
	if i >= len(line) {
		return 0, fmt.Errorf("%w: missing value (truncated line?)", errSyntax)
	}
	if depth > 64 {
		return 0, fmt.Errorf("%w: nested too deeply", errSyntax)
	}
	switch c := line[i]; {
	case c == '"':
		end, _, err := stringEnd(line, i)
		return end + 1, err
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = skipWS(line, i+1)
		if i < len(line) && line[i] == closer {
			return i + 1, nil
		}
		for {
			var err error
			if c == '{' {
				if i >= len(line) || line[i] != '"' {
					return 0, fmt.Errorf("%w: want a field name at byte %d", errSyntax, i)
				}
				if i, err = skipValue(line, i, depth+1); err != nil {
					return 0, err
				}
				if i = skipWS(line, i); i >= len(line) || line[i] != ':' {
					return 0, fmt.Errorf("%w: want : at byte %d", errSyntax, i)
				}
				i = skipWS(line, i+1)
			}
			if i, err = skipValue(line, i, depth+1); err != nil {
				return 0, err
			}
			i = skipWS(line, i)
			if i < len(line) && line[i] == ',' {
				i = skipWS(line, i+1)
				continue
			}
			if i < len(line) && line[i] == closer {
				return i + 1, nil
			}
			return 0, fmt.Errorf("%w: want , or %c at byte %d", errSyntax, closer, i)
		}
	case c == '-' || c >= '0' && c <= '9':
		j := i + 1
		for j < len(line) && (line[j] >= '0' && line[j] <= '9' || line[j] == '.' || line[j] == 'e' || line[j] == 'E' || line[j] == '+' || line[j] == '-') {
			j++
		}
		return j, nil
	default:
		for _, lit := range [...]string{"true", "false", "null"} {
			if len(line)-i >= len(lit) && string(line[i:i+len(lit)]) == lit {
				return i + len(lit), nil
			}
		}
		return 0, fmt.Errorf("%w: unexpected %q at byte %d", errSyntax, c, i)
	}
}

func skipWS(line []byte, i int) int {
	for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n') {
		i++
	}
	return i
}

// parseTime parses an RFC 3339 timestamp. The form the proxy writes (UTC, "Z", up to nine
// fractional digits) is parsed by hand; anything else goes through time.Parse.
func (d *decoder) parseTime(v []byte) (time.Time, error) {
	if t, ok := d.fastTime(v); ok {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(v))
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: bad %s %q", errSyntax, accesslog.FieldTimestamp, v)
	}
	return t.UTC(), nil
}

func (d *decoder) fastTime(v []byte) (time.Time, bool) {
	n := len(v)
	if n < 20 || v[n-1] != 'Z' || v[4] != '-' || v[7] != '-' || v[10] != 'T' || v[13] != ':' || v[16] != ':' {
		return time.Time{}, false
	}
	var nsec int
	if n > 20 {
		frac := v[19 : n-1]
		if frac[0] != '.' || len(frac) < 2 || len(frac) > 10 {
			return time.Time{}, false
		}
		digits := 0
		for _, c := range frac[1:] {
			if c < '0' || c > '9' {
				return time.Time{}, false
			}
			nsec = nsec*10 + int(c-'0')
			digits++
		}
		for ; digits < 9; digits++ {
			nsec *= 10
		}
	}
	if string(v[:19]) == string(d.lastSec[:]) {
		return d.lastBase.Add(time.Duration(nsec)), true
	}
	num := func(b []byte) int {
		x := 0
		for _, c := range b {
			if c < '0' || c > '9' {
				return -1
			}
			x = x*10 + int(c-'0')
		}
		return x
	}
	year, month, day := num(v[0:4]), num(v[5:7]), num(v[8:10])
	hour, minute, sec := num(v[11:13]), num(v[14:16]), num(v[17:19])
	if year < 0 || month < 1 || month > 12 || day < 1 || day > daysIn(month, year) ||
		hour < 0 || hour > 23 || minute < 0 || minute > 59 || sec < 0 || sec > 59 {
		return time.Time{}, false
	}
	base := time.Date(year, time.Month(month), day, hour, minute, sec, 0, time.UTC)
	copy(d.lastSec[:], v[:19])
	d.lastBase = base
	return base.Add(time.Duration(nsec)), true
}

func daysIn(month, year int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}
