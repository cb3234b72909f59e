package accesslog

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentWritesStayWholeLines writes from many goroutines and checks every line is one
// complete record with the contract's field names.
func TestConcurrentWritesStayWholeLines(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				w.Write(&Record{Timestamp: time.Now().UTC(), Client: "127.0.0.1", Method: "GET", Host: strings.Repeat("h", g+1), Port: i + 1, Path: "/", Status: 200, Decision: DecisionAllow})
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1600 {
		t.Fatalf("%d lines, want 1600", len(lines))
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("broken line %q: %v", l, err)
		}
		for _, k := range []string{FieldTimestamp, FieldClient, FieldMethod, FieldHost, FieldPort, FieldStatus, FieldDecision, FieldBytesIn, FieldBytesOut, FieldDurationMS} {
			if _, ok := m[k]; !ok {
				t.Fatalf("line lacks %s: %s", k, l)
			}
		}
	}
}
