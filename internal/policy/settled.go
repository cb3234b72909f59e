package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// DefaultSettle is how long a policy file must stay unchanged before a reload takes it.
const DefaultSettle = 250 * time.Millisecond

// ErrUnsettled is returned by ReadSettled for a file that kept changing: a write in progress.
var ErrUnsettled = errors.New("the file is still being written")

// ReadSettled reads a policy file that nobody is writing: one whose modification time is at least
// settle old and that did not change while it was read, or whose content is the same on two reads
// settle apart. A file rewritten in place is otherwise loaded half-written (its deny rules gone)
// until the next reload; writing a new file and renaming it over the old one avoids the wait. It
// tries again while the file keeps changing, for at most ten rounds, then returns ErrUnsettled.
func ReadSettled(ctx context.Context, path string, settle time.Duration) ([]byte, error) {
	if settle <= 0 {
		settle = DefaultSettle
	}
	prev, err := readQuiet(path, settle)
	if err != nil || prev != nil {
		return prev, err
	}
	if prev, err = os.ReadFile(path); err != nil {
		return nil, err
	}
	for range 10 {
		t := time.NewTimer(settle)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(data, prev) {
			return data, nil
		}
		prev = data
	}
	return nil, fmt.Errorf("read policy %s: %w", path, ErrUnsettled)
}

// readQuiet returns the file's content when its modification time is at least settle old and the
// same after the read as before it; nil, nil when the file changed recently.
func readQuiet(path string, settle time.Duration) ([]byte, error) {
	before, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if time.Since(before.ModTime()) < settle {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	after, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != int64(len(data)) {
		return nil, nil
	}
	return data, nil
}
