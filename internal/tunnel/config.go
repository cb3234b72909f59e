// Package tunnel is the reverse egress path: a provider on a machine with egress dials out to a
// broker and keeps one connection to it (TLS when configured); the broker multiplexes one yamux
// stream per worker connection over it. The wire format is specified in docs/tunnel-protocol.md.
//
// The broker side is a dial.Dialer (Broker.Dial), so broker mode is the proxy front end with a
// different dialer. The provider side dials targets with its own dial.Dialer and target policy.
package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-yamux/v5"
)

// Defaults for Config.
const (
	// DefaultKeepAlive bounds how long a dead peer goes unnoticed on an idle connection.
	DefaultKeepAlive = 15 * time.Second
	// DefaultMaxStreams caps concurrent streams per session (broker) and per connection (provider).
	DefaultMaxStreams = 1024
	// DefaultMaxStreamWindow is the most a stream's receive window grows to: large enough for bulk
	// transfers over long links (the yamux default of 256 KiB caps a stream at a few MB/s).
	DefaultMaxStreamWindow = 16 << 20
	// DefaultWindowBudget bounds the memory that growing receive windows may take per connection.
	DefaultWindowBudget = 512 << 20
	// DefaultHandshakeTimeout bounds the connection handshake (TLS included) and reading an open
	// header: short, because a connection in its handshake holds a slot of the broker's.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultMaxProvidersPerSession caps the providers connected for one session.
	DefaultMaxProvidersPerSession = 8
	// DefaultOpenTimeout is how long the broker waits for a provider to answer an open: a little
	// more than the provider's default dial timeout, so the provider's own timeout reason wins.
	DefaultOpenTimeout = 15 * time.Second
)

// Config tunes a tunnel connection. The zero value means every Default*.
type Config struct {
	KeepAlive        time.Duration
	MaxStreams       int
	MaxStreamWindow  uint32
	WindowBudget     int64
	HandshakeTimeout time.Duration
	OpenTimeout      time.Duration // broker only
	// MaxProvidersPerSession caps a session's providers (broker only).
	MaxProvidersPerSession int
}

func (c Config) withDefaults() Config {
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.MaxStreamWindow == 0 {
		c.MaxStreamWindow = DefaultMaxStreamWindow
	}
	if c.WindowBudget == 0 {
		c.WindowBudget = DefaultWindowBudget
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.MaxProvidersPerSession == 0 {
		c.MaxProvidersPerSession = DefaultMaxProvidersPerSession
	}
	return c
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.KeepAlive < 0 || (c.KeepAlive > 0 && c.KeepAlive < 2*time.Second) {
		errs = append(errs, fmt.Errorf("keepalive %v: want at least 2s", c.KeepAlive))
	}
	if c.MaxProvidersPerSession < 0 {
		errs = append(errs, fmt.Errorf("max providers per session %d: must not be negative", c.MaxProvidersPerSession))
	}
	if c.MaxStreams < 0 {
		errs = append(errs, fmt.Errorf("max streams %d: must not be negative", c.MaxStreams))
	}
	if c.MaxStreamWindow != 0 && c.MaxStreamWindow < 256<<10 {
		errs = append(errs, fmt.Errorf("max stream window %d: want at least 256 KiB", c.MaxStreamWindow))
	}
	if c.WindowBudget < 0 {
		errs = append(errs, fmt.Errorf("window budget %d: must not be negative", c.WindowBudget))
	}
	if c.HandshakeTimeout < 0 || c.OpenTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	return errors.Join(errs...)
}

// maxMessageSize bounds the multiplexer frames this end sends: large enough that one 512 KiB relay
// read goes out as one frame (the yamux default, 64 KiB including the header, would split it in
// nine), since every frame costs a hand-off to the send loop and a write system call. A frame is
// also bounded by the peer's window, which starts at 256 KiB.
const maxMessageSize = 1 << 20

// yamuxConfig builds the multiplexer settings. A keepalive ping is sent after KeepAlive/2 without
// traffic and must be answered within KeepAlive/2, so a dead peer is noticed within KeepAlive.
func (c Config) yamuxConfig(lw *logWriter) *yamux.Config {
	y := yamux.DefaultConfig()
	y.EnableKeepAlive = true
	y.KeepAliveInterval = c.KeepAlive / 2
	y.ConnectionWriteTimeout = c.KeepAlive / 2
	y.MaxStreamWindowSize = c.MaxStreamWindow
	y.MaxMessageSize = maxMessageSize
	y.MaxIncomingStreams = uint32(c.MaxStreams)
	y.AcceptBacklog = max(256, c.MaxStreams)
	y.LogOutput = lw
	return y
}

// memoryBudget is a yamux MemoryManager factory shared by the streams of one connection: the initial
// window of a new stream is always granted (streams are capped separately), window growth only while
// the connection's total stays under the budget, so many fast streams cannot take unbounded memory.
type memoryBudget struct {
	limit int64
	used  atomic.Int64
}

func (b *memoryBudget) newSpan() (yamux.MemoryManager, error) { return &span{b: b}, nil }

type span struct {
	b        *memoryBudget
	mu       sync.Mutex
	reserved int64
}

func (s *span) ReserveMemory(size int, prio uint8) error {
	n := int64(size)
	if prio < 255 && s.b.used.Load()+n > s.b.limit {
		return errWindowBudget
	}
	s.b.used.Add(n)
	s.mu.Lock()
	s.reserved += n
	s.mu.Unlock()
	return nil
}

func (s *span) ReleaseMemory(size int) {
	n := int64(size)
	s.mu.Lock()
	n = min(n, s.reserved)
	s.reserved -= n
	s.mu.Unlock()
	s.b.used.Add(-n)
}

func (s *span) Done() {
	s.mu.Lock()
	n := s.reserved
	s.reserved = 0
	s.mu.Unlock()
	s.b.used.Add(-n)
}

var errWindowBudget = errors.New("tunnel window memory budget reached")

// logWriter passes yamux's log lines to slog at debug level, and tells refused about each stream the
// peer opened that yamux reset because it is over MaxIncomingStreams.
type logWriter struct {
	logger  *slog.Logger
	refused func()
}

func (w *logWriter) Write(p []byte) (int, error) {
	if w.refused != nil && bytes.Contains(p, []byte("MaxIncomingStreams exceeded")) {
		w.refused()
	}
	w.logger.Debug("yamux", "msg", string(bytes.TrimSpace(p)))
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)

// clientMux starts the broker's side of the multiplexer on an authenticated connection. A provider
// may open no stream: yamux resets each one at once, before buffering any of its data, and refused
// hears of it.
func clientMux(c net.Conn, cfg Config, logger *slog.Logger, refused func()) (*yamux.Session, error) {
	budget := &memoryBudget{limit: cfg.WindowBudget}
	y := cfg.yamuxConfig(&logWriter{logger: logger, refused: refused})
	y.MaxIncomingStreams = 0
	return yamux.Client(forMux(c), y, budget.newSpan)
}

// serverMux starts the provider's side.
func serverMux(c net.Conn, cfg Config, logger *slog.Logger) (*yamux.Session, error) {
	budget := &memoryBudget{limit: cfg.WindowBudget}
	return yamux.Server(forMux(c), cfg.yamuxConfig(&logWriter{logger: logger}), budget.newSpan)
}
