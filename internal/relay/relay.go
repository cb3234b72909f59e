// Package relay copies bytes both ways between two connections, carries half-close, counts bytes,
// and ends both sides when either fails.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is what a finished relay moved and why it ended.
type Result struct {
	// AToB and BToA count bytes written to b and to a.
	AToB, BToA int64
	// Err is the first error of either direction other than a clean end of stream, or nil.
	Err error
	// ErrSide is the connection on whose side Err arose: the one a failed read came from, a failed
	// write went to, or that was reset. SideNone when Err is nil or ErrIdle.
	ErrSide Side
}

// Side names a connection of a relay.
type Side int

// Sides of a relay.
const (
	SideNone Side = iota
	SideA
	SideB
)

type closeWriter interface{ CloseWrite() error }

// Pipe copies a→b and b→a until both directions have ended. When one side finishes writing (EOF),
// the other side's write half is closed so it sees EOF too and can still answer (half-close). When a
// direction fails, both connections are aborted, with a TCP reset where possible, so that neither
// peer mistakes a broken transfer for a complete one. Pipe closes both connections before returning.
//
// idle, when non-zero, ends the relay once neither direction has moved a byte for that long.
func Pipe(a, b net.Conn, idle time.Duration) Result {
	var (
		res   Result
		once  sync.Once
		wg    sync.WaitGroup
		abort = func(err error, side Side) {
			once.Do(func() {
				res.Err, res.ErrSide = err, side
				Abort(a)
				Abort(b)
			})
		}
	)
	var tracker *idleTracker
	if idle > 0 {
		tracker = newIdleTracker(idle, a, b)
		defer tracker.stop()
	}
	// One direction runs on the caller's goroutine: an idle tunnel then costs one goroutine less.
	wg.Add(1)
	var aShut, bShut atomic.Bool // the relay has half-closed a, b
	go func() {
		defer wg.Done()
		res.AToB = copyHalf(half{b, SideB, &bShut}, half{a, SideA, &aShut}, tracker, abort)
	}()
	res.BToA = copyHalf(half{a, SideA, &aShut}, half{b, SideB, &bShut}, tracker, abort)
	wg.Wait()
	a.Close()
	b.Close()
	if tracker != nil && tracker.fired() {
		res.Err, res.ErrSide = ErrIdle, SideNone
	}
	return res
}

// ErrIdle is the Result.Err of a relay ended by its idle timeout.
var ErrIdle = errors.New("relay idle timeout")

// half is one connection of a relay: which side it is, and whether the relay has half-closed it.
type half struct {
	c    net.Conn
	side Side
	shut *atomic.Bool
}

// copyHalf copies src to dst, then half-closes dst and sets its shut flag. It is a named function
// so goroutine dumps show what each relay goroutine is doing.
func copyHalf(dst, src half, tracker *idleTracker, abort func(error, Side)) int64 {
	var n int64
	var err error
	failed := src.side
	if tracker == nil && spliceable(dst.c, src.c) {
		// Plain io.Copy keeps the splice(2) fast path between two *net.TCPConn: no user-space
		// buffer at all. Its error does not say which socket failed; the one reset does.
		n, err = io.Copy(dst.c, src.c)
		if err != nil && !wasReset(src.c) && wasReset(dst.c) {
			failed = dst.side
		}
	} else {
		var writeErr bool
		n, err, writeErr = copyBuffered(dst.c, src.c, tracker)
		if writeErr {
			failed = dst.side
		}
	}
	if err == nil && !src.shut.Load() && wasReset(src.c) {
		err = syscall.ECONNRESET
	}
	if err != nil {
		abort(err, failed)
		return n
	}
	dst.shut.Store(true)
	if cw, ok := dst.c.(closeWriter); ok {
		// A failed CloseWrite means the peer is already gone entirely; nothing is lost.
		cw.CloseWrite()
	} else {
		dst.c.Close()
	}
	return n
}

func spliceable(dst, src net.Conn) bool {
	_, d := dst.(*net.TCPConn)
	_, s := src.(*net.TCPConn)
	return canSplice && d && s
}

// Buffer sizes of copyBuffered. A relay waits for data holding only a small buffer, so an idle
// tunnel costs little memory; once reads fill it, it borrows a large pooled one until the flow
// drops back to a trickle. The large one is big so that a bulk transfer takes few system calls
// and, through a tunnel, few multiplexer frames (docs/performance.md has the measurements).
const (
	smallBufSize = 256
	largeBufSize = 512 << 10
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}

// copyBuffered copies src to dst until EOF or an error, touching tracker (when non-nil) for every
// chunk read. writeErr reports that the error came from writing to dst.
func copyBuffered(dst, src net.Conn, tracker *idleTracker) (n int64, err error, writeErr bool) {
	small := make([]byte, smallBufSize)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			bufPool.Put(large)
		}
	}()
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if tracker != nil {
				tracker.touch()
			}
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, werr, true
			}
		}
		if rerr == io.EOF {
			return n, nil, false
		}
		if rerr != nil {
			return n, rerr, false
		}
		switch {
		case large == nil && nr == len(small):
			large = bufPool.Get().(*[]byte)
			buf = *large
		case large != nil && nr < len(small):
			bufPool.Put(large)
			large, buf = nil, small
		}
	}
}

// Abort closes c so that its peer sees a failure: a TCP connection is reset (SO_LINGER 0), a
// multiplexed stream is reset when it supports it.
func Abort(c net.Conn) {
	switch c := c.(type) {
	case *net.TCPConn:
		c.SetLinger(0)
	case interface{ Reset() error }:
		c.Reset()
		return
	}
	c.Close()
}

// idleTracker ends a relay when no byte has moved for a while.
type idleTracker struct {
	mu    sync.Mutex
	last  time.Time
	idle  time.Duration
	timer *time.Timer
	fire  bool
	conns [2]net.Conn
}

func newIdleTracker(idle time.Duration, a, b net.Conn) *idleTracker {
	t := &idleTracker{last: time.Now(), idle: idle, conns: [2]net.Conn{a, b}}
	t.timer = time.AfterFunc(idle, t.check)
	return t
}

func (t *idleTracker) touch() {
	t.mu.Lock()
	t.last = time.Now()
	t.mu.Unlock()
}

func (t *idleTracker) check() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if wait := t.idle - time.Since(t.last); wait > 0 {
		t.timer.Reset(wait)
		return
	}
	t.fire = true
	t.conns[0].Close()
	t.conns[1].Close()
}

func (t *idleTracker) fired() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fire
}

func (t *idleTracker) stop() { t.timer.Stop() }
