package loopbacktest

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// LogBuffer collects what several goroutines log (an access log, a slog handler's text) for a test
// to read.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Records parses what was written so far as access-log lines, failing the test on a line that is
// not one.
func (l *LogBuffer) Records(t testing.TB) []accesslog.Record {
	t.Helper()
	var out []accesslog.Record
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var r accesslog.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not an access-log line: %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}
