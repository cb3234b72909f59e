// Package serve holds what swarm-proxy's servers share around their listeners: an accept loop that
// rides out temporary failures (out of file descriptors, buffers or memory; a connection aborted
// before it was accepted) with backoff, a record of listeners gone for good that /readyz reports,
// and a tracker of the connections a server owns, so that its shutdown waits for them.
package serve

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Backoff bounds of Listener.Accept's retries.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

// Temporary reports whether an accept error may go away on its own: the process or the system is
// out of file descriptors, buffers or memory, or a client gave up before its connection was
// accepted.
func Temporary(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Listener is a net.Listener whose Accept retries temporary errors with backoff (5 ms doubling to
// 1 s, each logged) and returns an error only when the listener is closed or broken for good;
// then Health records it, so that the admin server's /readyz fails.
type Listener struct {
	net.Listener
	name   string
	health *Health
	logger *slog.Logger

	closeOnce sync.Once
	closed    chan struct{}
}

// Listen wraps ln; name says which listener it is in logs and in /readyz ("proxy", "socks", ...).
// A nil health or logger is allowed.
func Listen(ln net.Listener, name string, health *Health, logger *slog.Logger) *Listener {
	if logger == nil {
		logger = slog.Default()
	}
	return &Listener{Listener: ln, name: name, health: health, logger: logger, closed: make(chan struct{})}
}

// Accept waits for the next connection.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		select {
		case <-l.closed:
			return nil, err
		default:
		}
		if errors.Is(err, net.ErrClosed) || !Temporary(err) {
			l.health.gone(l.name, err)
			l.logger.Error("listener failed for good", "listener", l.name, "err", err)
			return nil, err
		}
		delay = min(max(2*delay, minBackoff), maxBackoff)
		l.logger.Warn("accept failed; retrying", "listener", l.name, "err", err, "in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// Close closes the listener; a listener closed so is not reported as gone.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Health records the listeners that failed for good. The zero value is ready; a nil *Health
// records nothing.
type Health struct {
	mu   sync.Mutex
	errs []error
}

func (h *Health) gone(name string, err error) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, fmt.Errorf("the %s listener stopped accepting: %w", name, err))
}

// Err is nil while every listener serves, else why not.
func (h *Health) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return errors.Join(h.errs...)
}
