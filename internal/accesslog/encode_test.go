package accesslog

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"
)

// sample is a record with every field set, as the proxy writes them.
var sample = Record{
	Timestamp: time.Date(2026, 11, 29, 12, 0, 0, 123456789, time.UTC), RequestID: "0a1b2c3d4e5f6a7b",
	Client: "10.0.0.5", Session: "s1", Provider: "127.0.0.1:4242/ab12cd", Method: "CONNECT", Host: "api.github.com",
	Port: 443, Path: "/x", Status: 200, Decision: DecisionAllow, Mode: "enforce", Rule: "github",
	Reason: "allowed by rule github (host api.github.com, policy.yaml line 3)", Upstream: "140.82.112.6:443",
	BytesIn: 123456789, BytesOut: 42, DurationMS: 12.345, Error: "", Inspected: true, TunnelID: "9f8e7d6c5b4a3921",
}

// TestAppendJSONMatchesEncodingJSON: the hand-written encoder writes what encoding/json writes for
// the Record type, byte for byte, so its json tags stay the one description of the format.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	minimal := Record{Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Method: "GET", Decision: DecisionDeny}
	escapes := sample
	escapes.Reason = "quote \" backslash \\ tab \t newline \n nul \x00 del \x7f é 😀"
	escapes.Path = "/caf\u00e9/\x1f"
	tiny, huge := sample, sample
	tiny.DurationMS, huge.DurationMS = 1e-9, 3e21
	withSecrets := sample
	withSecrets.Secrets = []string{"anthropic", "git\"hub"}
	captured := sample
	captured.Transparent, captured.OriginalDst = true, "[2001:db8::7]:443"
	for name, rec := range map[string]Record{"full": sample, "minimal": minimal, "escapes": escapes, "tiny": tiny, "huge": huge, "secrets": withSecrets, "transparent": captured} {
		want, err := json.Marshal(&rec)
		if err != nil {
			t.Fatal(err)
		}
		if got := rec.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

// FuzzAppendJSON: whatever the strings hold, the line is valid JSON that decodes to what
// encoding/json's own line decodes to.
func FuzzAppendJSON(f *testing.F) {
	f.Add("GET", "example.com", "/a\"b", "reason <&>", "\xff\xfe bad utf-8", 1.5)
	f.Add("", "", "", "", "", 0.0)
	f.Fuzz(func(t *testing.T, method, host, path, reason, errText string, dur float64) {
		if math.IsNaN(dur) || math.IsInf(dur, 0) {
			return // encoding/json refuses these; AppendJSON writes 0
		}
		rec := sample
		rec.Method, rec.Host, rec.Path, rec.Reason, rec.Error, rec.DurationMS = method, host, path, reason, errText, dur
		line := rec.AppendJSON(nil)
		if !json.Valid(line) {
			t.Fatalf("invalid JSON: %s", line)
		}
		want, _ := json.Marshal(&rec)
		var got, exp Record
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &exp); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, exp) {
			t.Fatalf("decoded\n %+v\nwant\n %+v", got, exp)
		}
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	buf := make([]byte, 0, 1024)
	for range b.N {
		buf = sample.AppendJSON(buf[:0])
	}
}

func BenchmarkEncodingJSON(b *testing.B) {
	for range b.N {
		json.Marshal(&sample)
	}
}
