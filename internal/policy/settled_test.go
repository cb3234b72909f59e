package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fullPolicy has deny rules at its end: every prefix that ends on a line is a valid policy with
// fewer of them, the dangerous half-written file.
func fullPolicy() []byte {
	var b strings.Builder
	b.WriteString("mode: discovery\ndeny:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "  - host: evil%d.example\n", i)
	}
	return []byte(b.String())
}

// slowWrite rewrites path in place, one line every pause, as an editor or a careless script would.
func slowWrite(t *testing.T, path string, data []byte, pause time.Duration) <-chan struct{} {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer f.Close()
		for line := range bytes.Lines(data) {
			if _, err := f.Write(line); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(pause) // the writer's own pace, the condition under test
		}
	}()
	return done
}

// TestReadSettledSlowWriter: while a writer rewrites the file in pieces, ReadSettled never returns
// a part of it; it returns the whole file once the writer is done.
func TestReadSettledSlowWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("mode: discovery\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(path, old, old)
	full := fullPolicy()
	// The writer's pauses must stay shorter than settle for the promise to hold; settle is 40 times
	// the pause so that a loaded machine (the race detector, parallel packages) that stalls the
	// writer's goroutine does not look like a writer that stopped.
	const settle = 400 * time.Millisecond
	done := slowWrite(t, path, full, 10*time.Millisecond) // 22 lines, 220 ms
	reads := 0
	for {
		data, err := ReadSettled(context.Background(), path, settle)
		reads++
		if err != nil && !errors.Is(err, ErrUnsettled) {
			t.Fatal(err)
		}
		if err == nil && !bytes.Equal(data, full) {
			t.Fatalf("read %d returned %d of %d bytes while the file was being written:\n%s", reads, len(data), len(full), data)
		}
		if err == nil {
			break
		}
	}
	<-done
	p, err := Parse(path, full)
	if err != nil || len(p.Deny) != 20 {
		t.Fatalf("full policy: %v", err)
	}
}

// TestReadSettledQuietFile: a file not written for a while is read at once, with no waiting.
func TestReadSettledQuietFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, fullPolicy(), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	os.Chtimes(path, old, old)
	start := time.Now()
	data, err := ReadSettled(context.Background(), path, 10*time.Second)
	if err != nil || !bytes.Equal(data, fullPolicy()) {
		t.Fatalf("ReadSettled = %d bytes, %v", len(data), err)
	}
	if d := time.Since(start); d >= 10*time.Second {
		t.Errorf("took %s for a quiet file", d)
	}
	// A file that was just written is read twice, settle apart.
	if err := os.WriteFile(path, []byte("mode: enforce\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	data, err = ReadSettled(context.Background(), path, 50*time.Millisecond)
	if err != nil || string(data) != "mode: enforce\n" || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("fresh file: %q, %v after %s", data, err, time.Since(start))
	}
}
