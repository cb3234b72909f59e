package accesslog

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends r as one JSON object, with the same keys, order and omissions as its json tags
// (TestAppendJSONMatchesEncodingJSON holds the two together). It is the access log's hot path: one
// call per request, with no reflection and no allocation beyond growing b.
func (r *Record) AppendJSON(b []byte) []byte {
	b = append(b, `{"`+FieldTimestamp+`":"`...)
	b = r.Timestamp.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendStringField(b, FieldRequestID, r.RequestID, true)
	b = appendStringField(b, FieldClient, r.Client, false)
	b = appendStringField(b, FieldSession, r.Session, true)
	b = appendStringField(b, FieldProvider, r.Provider, true)
	b = appendStringField(b, FieldMethod, r.Method, false)
	b = appendStringField(b, FieldHost, r.Host, false)
	b = appendIntField(b, FieldPort, int64(r.Port))
	b = appendStringField(b, FieldPath, r.Path, true)
	b = appendIntField(b, FieldStatus, int64(r.Status))
	b = appendStringField(b, FieldDecision, r.Decision, false)
	b = appendStringField(b, FieldMode, r.Mode, false)
	b = appendStringField(b, FieldRule, r.Rule, false)
	b = appendStringField(b, FieldReason, r.Reason, false)
	b = appendStringField(b, FieldUpstream, r.Upstream, true)
	b = appendIntField(b, FieldBytesIn, r.BytesIn)
	b = appendIntField(b, FieldBytesOut, r.BytesOut)
	b = append(b, `,"`+FieldDurationMS+`":`...)
	b = appendFloat(b, r.DurationMS)
	b = appendStringField(b, FieldError, r.Error, false)
	if r.Inspected {
		b = append(b, `,"`+FieldInspected+`":true`...)
	}
	b = appendStringField(b, FieldTunnelID, r.TunnelID, true)
	if len(r.Secrets) > 0 {
		b = append(b, `,"`+FieldSecrets+`":[`...)
		for i, name := range r.Secrets {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, name)
		}
		b = append(b, ']')
	}
	if r.Transparent {
		b = append(b, `,"`+FieldTransparent+`":true`...)
	}
	b = appendStringField(b, FieldOriginalDst, r.OriginalDst, true)
	return append(b, '}')
}

func appendStringField(b []byte, key, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

func appendIntField(b []byte, key string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

// appendFloat formats f as encoding/json does: plain decimals, exponent form only for very small or
// very large magnitudes. NaN and infinities, which JSON cannot carry, become 0.
func appendFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, '0')
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if n := len(b); format == 'e' && n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
		b[n-2] = b[n-1] // e-09 becomes e-9
		b = b[:n-1]
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control characters escaped,
// invalid UTF-8 replaced by U+FFFD, as encoding/json does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
