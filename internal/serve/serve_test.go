package serve

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// scriptedListener returns the errors of script from Accept, one per call, then a connection.
type scriptedListener struct {
	net.Listener // nil: only Accept and Close are used
	script       []error
	calls        atomic.Int32
	closed       chan struct{}
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	i := int(l.calls.Add(1)) - 1
	if i < len(l.script) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: l.script[i]}
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *scriptedListener) Close() error { close(l.closed); return nil }

// TestAcceptRetriesTemporaryErrors: out of descriptors (process and system), of buffers, and a
// connection aborted before it was accepted are retried, and readiness holds.
func TestAcceptRetriesTemporaryErrors(t *testing.T) {
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	script := []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ECONNABORTED}
	sl := &retryThenReal{script: script, real: real}
	var h Health
	l := Listen(sl, "test", &h, nil)
	client, err := net.Dial("tcp", real.Addr().String()) // waits in the backlog while Accept retries
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept: %v, want a connection after the temporary errors", err)
	}
	c.Close()
	if n := sl.calls.Load(); n != int32(len(script))+1 {
		t.Fatalf("%d accept calls, want %d", n, len(script)+1)
	}
	if err := h.Err(); err != nil {
		t.Fatalf("not ready after temporary errors: %v", err)
	}
}

type retryThenReal struct {
	script []error
	real   net.Listener
	calls  atomic.Int32
}

func (l *retryThenReal) Accept() (net.Conn, error) {
	i := int(l.calls.Add(1)) - 1
	if i < len(l.script) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: l.script[i]}
	}
	return l.real.Accept()
}
func (l *retryThenReal) Close() error   { return l.real.Close() }
func (l *retryThenReal) Addr() net.Addr { return l.real.Addr() }

// TestAcceptGoneForGood: an error that does not go away ends Accept and fails readiness, naming
// the listener; closing the listener does not.
func TestAcceptGoneForGood(t *testing.T) {
	var h Health
	l := Listen(&scriptedListener{script: []error{syscall.EBADF}, closed: make(chan struct{})}, "provider", &h, nil)
	if _, err := l.Accept(); !errors.Is(err, syscall.EBADF) {
		t.Fatalf("Accept: %v, want EBADF", err)
	}
	if err := h.Err(); err == nil || !strings.Contains(err.Error(), "provider listener") {
		t.Fatalf("health %v, want the provider listener gone", err)
	}

	var h2 Health
	sl := &scriptedListener{closed: make(chan struct{})}
	l2 := Listen(sl, "proxy", &h2, nil)
	done := make(chan error, 1)
	go func() { _, err := l2.Accept(); done <- err }()
	l2.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if err := h2.Err(); err != nil {
		t.Fatalf("a closed listener counts as gone: %v", err)
	}
}

// TestCloseEndsBackoff: Close during a backoff wait ends Accept at once.
func TestCloseEndsBackoff(t *testing.T) {
	script := make([]error, 100)
	for i := range script {
		script[i] = syscall.EMFILE
	}
	l := Listen(&scriptedListener{script: script, closed: make(chan struct{})}, "test", nil, nil)
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	time.Sleep(50 * time.Millisecond) // into the backoff: what is tested
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting 5 s after Close")
	}
}

// TestTrackerShutdown: idle items end at once, busy ones are waited for, and when the context
// ends first the rest are aborted and reported so; nothing new is tracked afterwards.
func TestTrackerShutdown(t *testing.T) {
	var tr Tracker
	idleEnded := make(chan struct{})
	idle := tr.Add(func() { close(idleEnded) })
	tr.SetIdle(idle, true)
	finish := make(chan struct{})
	tr.Go(func() {}, func(*Item) { <-finish })
	go func() { <-idleEnded; tr.Done(idle) }()
	done := make(chan error, 1)
	go func() { done <- tr.Shutdown(context.Background()) }()
	select {
	case <-idleEnded:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle item was not ended")
	}
	if tr.Add(func() {}) != nil {
		t.Fatal("an item was tracked after Shutdown began")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a busy item", err)
	case <-time.After(50 * time.Millisecond): // a bounded wait for the wrong outcome
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var tr2 Tracker
	stuck := make(chan struct{})
	it2 := tr2.Add(func() { close(stuck) })
	go func() { <-stuck; tr2.Done(it2) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := tr2.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) || !tr2.Aborted(it2) {
		t.Fatalf("Shutdown %v aborted=%v, want the deadline and the item aborted", err, tr2.Aborted(it2))
	}
}
