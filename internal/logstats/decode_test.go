package logstats

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

func TestDecode(t *testing.T) {
	ts := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name, line string
		want       Entry
		err        string // substring of the error; "" for success
	}{
		{name: "full record",
			line: `{"timestamp":"2026-11-24T10:00:00.5Z","request_id":"ab","client":"10.0.0.5","session":"s1","provider":"p","method":"CONNECT","host":"api.github.com","port":443,"path":"/x","status":200,"decision":"allow","mode":"enforce","rule":"r","reason":"why \"quoted\"","upstream":"1.2.3.4:443","bytes_in":12,"bytes_out":34,"duration_ms":1.25e2,"error":"","inspected":true,"tunnel_id":"t1"}`,
			want: Entry{Time: ts.Add(500 * time.Millisecond), Client: "10.0.0.5", Session: "s1", Method: "CONNECT", Host: "api.github.com", Port: 443, Path: "/x", Decision: "allow", Rule: "r", Upstream: "1.2.3.4:443", BytesIn: 12, BytesOut: 34, Inspected: true}},
		{name: "spaces and any field order",
			line: ` { "decision" : "deny" , "host":"a.example","timestamp":"2026-11-24T10:00:00Z", "port": 80 ,"error":"no_rule_matched"} `,
			want: Entry{Time: ts, Host: "a.example", Port: 80, Decision: "deny", Error: "no_rule_matched"}},
		{name: "escaped strings are decoded",
			line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","host":"a\u002eexample","client":"x\\y"}`,
			want: Entry{Time: ts, Host: "a.example", Client: `x\y`, Decision: "allow"}},
		{name: "nulls and unknown nested fields",
			line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","session":null,"port":null,"extra":{"a":[1,{"b":"}"}],"c":true},"list":[],"f":false}`,
			want: Entry{Time: ts, Decision: "allow"}},
		{name: "timestamp with offset",
			line: `{"timestamp":"2026-11-24T12:00:00+02:00","decision":"allow"}`,
			want: Entry{Time: ts, Decision: "allow"}},
		{name: "nanoseconds",
			line: `{"timestamp":"2026-11-24T10:00:00.000000001Z","decision":"allow"}`,
			want: Entry{Time: ts.Add(1), Decision: "allow"}},
		{name: "truncated in a string", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","host":"api.gi`, err: "unterminated string"},
		{name: "truncated after a value", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow"`, err: "want , or }"},
		{name: "not an object", line: `["timestamp"]`, err: "does not start with {"},
		{name: "plain text", line: `GET / HTTP/1.1`, err: "does not start with {"},
		{name: "two objects", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow"}{}`, err: "data after the object"},
		{name: "no timestamp", line: `{"decision":"allow","host":"a"}`, err: "no timestamp"},
		{name: "bad timestamp", line: `{"timestamp":"2026-13-24T10:00:00Z","decision":"allow"}`, err: "bad timestamp"},
		{name: "february 30", line: `{"timestamp":"2026-02-30T10:00:00Z","decision":"allow"}`, err: "bad timestamp"},
		{name: "unknown decision", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"maybe"}`, err: "want allow or deny"},
		{name: "port as string", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","port":"443"}`, err: "want an integer"},
		{name: "port out of range", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","port":70000}`, err: "out of range"},
		{name: "fractional bytes", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","bytes_in":1.5}`, err: "want an integer"},
		{name: "host as number", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","host":5}`, err: "want a string"},
		{name: "control character", line: "{\"timestamp\":\"2026-11-24T10:00:00Z\",\"decision\":\"allow\",\"host\":\"a\tb\"}", err: "control character"},
		{name: "inspected as string", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","inspected":"yes"}`, err: "want true or false"},
		{name: "bad literal", line: `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","x":nope}`, err: "unexpected"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var e Entry
			err := newDecoder().decode([]byte(c.line), &e)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, errSyntax) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !e.Time.Equal(c.want.Time) {
				t.Errorf("time %v, want %v", e.Time, c.want.Time)
			}
			e.Time, c.want.Time = time.Time{}, time.Time{}
			if e != c.want {
				t.Errorf("got %+v\nwant %+v", e, c.want)
			}
		})
	}
}

// FuzzDecode checks the hand-written decoder against encoding/json: whatever encoding/json reads
// as a record, the decoder reads with the same values, and the decoder never panics.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"timestamp":"2026-11-24T10:00:00.5Z","client":"10.0.0.5","session":"s","method":"GET","host":"a.example","port":80,"status":200,"decision":"allow","bytes_in":1,"bytes_out":2,"error":"x"}`,
		`{"timestamp":"2026-11-24T10:00:00Z","decision":"deny","host":"a\u002e\"b","extra":[{"x":null}]}`,
		`{"timestamp":"2026-11-24T10:00:00+01:00","decision":"allow","port":null}`,
		`{"timestamp":"2026-11-24T10:00:00Z","decision":"allow"`,
		`{}`, `[]`, `"x"`, ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var e Entry
		err := newDecoder().decode([]byte(line), &e)
		if !utf8.ValidString(line) || strings.ContainsAny(line, "\n\r") {
			return // encoding/json replaces invalid UTF-8; the log never has raw newlines in a line
		}
		var m map[string]json.RawMessage
		if json.Unmarshal([]byte(line), &m) != nil {
			return
		}
		var r accesslog.Record
		if json.Unmarshal([]byte(line), &r) != nil || !exactKeys(m) {
			return
		}
		if _, ok := m["timestamp"]; !ok || (r.Decision != "allow" && r.Decision != "deny") ||
			!bytes.HasPrefix(m["timestamp"], []byte(`"`)) || r.Port < 0 || r.Port > 65535 {
			return
		}
		if err != nil {
			t.Fatalf("encoding/json reads %q as a record, the decoder fails: %v", line, err)
		}
		want := Entry{Time: r.Timestamp.UTC(), Client: r.Client, Session: r.Session, Method: r.Method, Host: r.Host,
			Port: r.Port, Decision: r.Decision, Error: r.Error, BytesIn: r.BytesIn, BytesOut: r.BytesOut}
		if !e.Time.Equal(want.Time) {
			t.Fatalf("time %v, encoding/json %v", e.Time, want.Time)
		}
		e.Time, want.Time = time.Time{}, time.Time{}
		if e != want {
			t.Fatalf("decoder %+v\nencoding/json %+v", e, want)
		}
	})
}

// exactKeys reports whether every key is spelled as a Record field exactly, or matches none:
// encoding/json also matches keys case-insensitively, the decoder (like the writer) does not.
func exactKeys(m map[string]json.RawMessage) bool {
	fields := []string{"timestamp", "request_id", "client", "session", "provider", "method", "host", "port", "path",
		"status", "decision", "mode", "rule", "reason", "upstream", "bytes_in", "bytes_out", "duration_ms", "error"}
	for k := range m {
		for _, f := range fields {
			if strings.EqualFold(k, f) && k != f {
				return false
			}
		}
	}
	return true
}

func TestReadMalformedLines(t *testing.T) {
	good := `{"timestamp":"2026-11-24T10:00:00Z","client":"10.0.0.5","method":"GET","host":"a.example","port":80,"decision":"allow"}`
	input := strings.Join([]string{
		good,
		"this is not json",
		"",
		good + "\r",
		`{"timestamp":"2026-11-24T10:00:00Z","host":"a.example"}`, // no decision
		"   ",
		"{" + strings.Repeat(`"x":"`+strings.Repeat("y", 1000)+`",`, 300) + `"decision":"allow"}`, // over 256 KiB
		good,
		`{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","host":"b.exa`, // truncated last line
	}, "\n")
	var hosts []string
	st, err := Read(context.Background(), []Source{StreamSource("in", strings.NewReader(input))}, func(e *Entry) {
		hosts = append(hosts, e.Host)
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(hosts, " ") != "a.example a.example a.example" {
		t.Errorf("hosts %v", hosts)
	}
	if st.Lines != 7 || st.Records != 3 || st.Malformed != 4 {
		t.Errorf("stats %+v: want 7 lines, 3 records, 4 malformed", st)
	}
	var at []string
	for _, l := range st.MalformedAt {
		at = append(at, l.String())
	}
	if strings.Join(at, " ") != "in:2 in:5 in:7 in:9" {
		t.Errorf("malformed at %v, want in:2 in:5 in:7 in:9", at)
	}
	if w := st.Warnings(); len(w) != 1 || !strings.Contains(w[0], "skipped 4 malformed lines of 7 (in:2, in:5, in:7, in:9; first: ") {
		t.Errorf("warnings %q", w)
	}
	if !strings.Contains(st.MalformedAt[2].Reason, "256 KiB") {
		t.Errorf("long line reason %q", st.MalformedAt[2].Reason)
	}
}

func TestReadReportsFirstFiveMalformed(t *testing.T) {
	input := strings.Repeat("garbage\n", 12)
	st, err := Read(context.Background(), []Source{StreamSource("in", strings.NewReader(input))}, func(*Entry) {})
	if err != nil {
		t.Fatal(err)
	}
	if st.Malformed != 12 || len(st.MalformedAt) != MaxReportedLines || !strings.Contains(st.Warnings()[0], "in:5, ...;") {
		t.Errorf("stats %+v warnings %q", st, st.Warnings())
	}
}

func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestReadMixedAndTruncatedInputs(t *testing.T) {
	line := func(host string) string {
		return `{"timestamp":"2026-11-24T10:00:00Z","client":"10.0.0.5","method":"CONNECT","host":"` + host + `","port":443,"decision":"allow"}` + "\n"
	}
	var many strings.Builder
	for range 2000 {
		many.WriteString(line("z.example"))
	}
	full := gzipped(t, many.String())
	for _, c := range []struct {
		name      string
		sources   []Source
		records   int64
		truncated string // substring of the truncation warning, "" for none
	}{
		{"plain, gzip and a stream", []Source{
			StreamSource("access.log", strings.NewReader(line("a.example")+line("b.example"))),
			StreamSource("access-1.log.gz", bytes.NewReader(gzipped(t, line("c.example")))),
			StreamSource("stdin", strings.NewReader(line("d.example"))),
		}, 4, ""},
		{"gzip without a final newline", []Source{
			StreamSource("x.gz", bytes.NewReader(gzipped(t, strings.TrimSuffix(line("a.example"), "\n")))),
		}, 1, ""},
		{"truncated gzip keeps the lines before the cut", []Source{
			StreamSource("cut.log.gz", bytes.NewReader(full[:len(full)/2])),
			StreamSource("after.log", strings.NewReader(line("after.example"))),
		}, -1, "cut.log.gz: compressed stream is truncated"},
		{"damaged gzip header", []Source{
			StreamSource("bad.gz", bytes.NewReader([]byte{0x1f, 0x8b, 0, 0, 0})),
			StreamSource("after.log", strings.NewReader(line("after.example"))),
		}, 1, "bad.gz: not a readable gzip file"},
		{"corrupt deflate data", []Source{
			StreamSource("corrupt.log.gz", bytes.NewReader(corrupt(full))),
			StreamSource("after.log", strings.NewReader(line("after.example"))),
		}, 1, "corrupt.log.gz: compressed stream is truncated or damaged after line 0 (flate: corrupt input"},
		{"concatenated gzip members", []Source{
			StreamSource("cat.gz", bytes.NewReader(append(gzipped(t, line("a.example")), gzipped(t, line("b.example"))...))),
		}, 2, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var hosts []string
			st, err := Read(context.Background(), c.sources, func(e *Entry) { hosts = append(hosts, e.Host) })
			if err != nil {
				t.Fatal(err)
			}
			if c.records >= 0 && st.Records != c.records {
				t.Errorf("records %d, want %d", st.Records, c.records)
			}
			if c.truncated == "" && len(st.Truncated) != 0 || c.truncated != "" && (len(st.Truncated) != 1 || !strings.Contains(st.Truncated[0], c.truncated)) {
				t.Errorf("truncated %q, want %q", st.Truncated, c.truncated)
			}
			if c.records < 0 {
				// Part of the cut file was read, then the next source still was.
				if st.Records < 10 || st.Records >= 2000 || hosts[len(hosts)-1] != "after.example" {
					t.Errorf("records %d, last host %q", st.Records, hosts[len(hosts)-1])
				}
			}
		})
	}
}

// corrupt returns a copy of a gzip stream whose first deflate block has the reserved block type,
// which the decompressor reports as corrupt input.
func corrupt(gz []byte) []byte {
	out := bytes.Clone(gz)
	out[10] = 0x07 // after the 10-byte gzip header: BFINAL=1, BTYPE=11
	return out
}

func TestReadOpenErrorAndCancel(t *testing.T) {
	_, err := Read(context.Background(), []Source{FileSource("testdata/does-not-exist.log")}, func(*Entry) {})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "does-not-exist.log") {
		t.Fatalf("error %v, want one naming the file", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	line := `{"timestamp":"2026-11-24T10:00:00Z","decision":"allow","host":"a"}` + "\n"
	_, err = Read(ctx, []Source{StreamSource("in", strings.NewReader(strings.Repeat(line, 10000)))}, func(*Entry) {})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}
