package ticket

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Revocations is a revocation list: session ids and token ids, one a line ('#' starts a comment).
// It is safe for concurrent use; Watch keeps it in step with its file.
type Revocations struct {
	set atomic.Pointer[map[string]bool]
}

// Revoked reports whether the session or the token id is on the list.
func (r *Revocations) Revoked(session, tokenID string) bool {
	m := r.set.Load()
	return m != nil && ((*m)[session] || (tokenID != "" && (*m)[tokenID]))
}

// Len is the number of entries in force.
func (r *Revocations) Len() int {
	if m := r.set.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// Load reads path and puts its entries in force. A line that is a whole token stands for its token
// id: the list is where an operator pastes the token of a leaked ticket, and a token is never equal
// to an id, so taken as it is the line would revoke nothing. A line that is none of these is an
// error naming its line number; the list in force is then left as it was.
func (r *Revocations) Load(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	m := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		switch {
		case LooksLikeToken(line):
			m[TokenID(line)] = true
		case ValidSession(line) != nil:
			return fmt.Errorf("revocation list %s line %d: not a session id, token id or token", path, n)
		default:
			m[line] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("revocation list %s: %w", path, err)
	}
	r.set.Store(&m)
	return nil
}

// Watch rereads path every poll while ctx lasts and, when its content changed, puts it in force and
// calls changed; failures go to failed and leave the list in force as it was.
func (r *Revocations) Watch(ctx context.Context, path string, poll time.Duration, changed func(), failed func(error)) {
	last, _ := os.ReadFile(path)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := os.ReadFile(path)
		if err != nil {
			failed(fmt.Errorf("revocation list: %w", err))
			continue
		}
		if bytes.Equal(b, last) {
			continue
		}
		if err := r.Load(path); err != nil {
			failed(err)
			continue
		}
		last = b
		changed()
	}
}
