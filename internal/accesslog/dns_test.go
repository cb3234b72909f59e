package accesslog

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestWriteDNS(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	recs := []DNSRecord{
		{Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Client: "10.0.0.1", Method: MethodDNS, Host: "allowed.test", DNSType: "A",
			Status: "NOERROR", Answers: []string{"192.0.2.7"}, Decision: DecisionAllow, Mode: "enforce", Rule: "allow#1", Reason: "r"},
		{Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Client: "10.0.0.1", Method: MethodDNS, Host: "x\n.test", DNSType: "TXT",
			Status: "REFUSED", Decision: DecisionDeny, Mode: "enforce", Flags: []string{FlagDNSSuspicious}, Error: "dns_suspicious"},
	}
	for i := range recs {
		if err := w.WriteDNS(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines:\n%s", b.String())
	}
	want := `{"timestamp":"2026-01-02T03:04:05Z","client":"10.0.0.1","method":"DNS","host":"allowed.test","dns_type":"A","status":"NOERROR","answers":["192.0.2.7"],"decision":"allow","mode":"enforce","rule":"allow#1","reason":"r","duration_ms":0,"error":""}`
	if lines[0] != want {
		t.Errorf("got  %s\nwant %s", lines[0], want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &m); err != nil {
		t.Fatal(err)
	}
	if a, ok := m[FieldAnswers].([]any); !ok || len(a) != 0 {
		t.Errorf("a refusal's answers = %#v, want []", m[FieldAnswers])
	}
	if f, _ := m[FieldFlags].([]any); len(f) != 1 || f[0] != FlagDNSSuspicious {
		t.Errorf("flags = %#v", m[FieldFlags])
	}
}
