package relay

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

func runPipe(a, b net.Conn, idle time.Duration) <-chan Result {
	done := make(chan Result, 1)
	go func() { done <- Pipe(a, b, idle) }()
	return done
}

func wait(t *testing.T, done <-chan Result) Result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not finish")
		return Result{}
	}
}

// TestHalfClose: the client shuts its write side, the server reads to EOF and only then answers;
// the answer must still reach the client.
func TestHalfClose(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		client, proxyA := loopbacktest.TCPPair(t)
		proxyB, server := loopbacktest.TCPPair(t)
		done := runPipe(proxyA, proxyB, idle)

		client.Write([]byte("question"))
		client.CloseWrite()
		got, err := io.ReadAll(server)
		if err != nil || string(got) != "question" {
			t.Fatalf("server read %q, %v", got, err)
		}
		server.Write([]byte("answer"))
		server.Close()
		ans, err := io.ReadAll(client)
		if err != nil || string(ans) != "answer" {
			t.Fatalf("client read %q, %v", ans, err)
		}
		r := wait(t, done)
		if r.Err != nil || r.AToB != 8 || r.BToA != 6 {
			t.Fatalf("idle %v: result %+v", idle, r)
		}
	}
}

// TestFailureResetsPeer: when the upstream side is reset mid-transfer, the client must see a reset,
// not a clean EOF that would make a truncated transfer look complete, and the result blames b.
func TestFailureResetsPeer(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		testFailureResetsPeer(t, idle)
	}
}

func testFailureResetsPeer(t *testing.T, idle time.Duration) {
	client, proxyA := loopbacktest.TCPPair(t)
	proxyB, server := loopbacktest.TCPPair(t)
	done := runPipe(proxyA, proxyB, idle)

	server.Write([]byte("partial"))
	buf := make([]byte, 7)
	if _, err := io.ReadFull(client, buf); err != nil {
		t.Fatal(err)
	}
	server.SetLinger(0)
	server.Close() // RST towards the relay

	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(client)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read error %v, want connection reset", err)
	}
	if r := wait(t, done); r.Err == nil || r.ErrSide != SideB {
		t.Fatalf("idle %v: relay result %+v, want an error on side b", idle, r)
	}
}

// TestClientResetIsBlamedOnA: a reset from a's peer in the middle of a transfer towards it ends
// the relay with an error on side a, whether the reset meets a read or a write, with splice
// (no idle timeout) or a user-space copy.
func TestClientResetIsBlamedOnA(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		client, proxyA := loopbacktest.TCPPair(t)
		proxyB, server := loopbacktest.TCPPair(t)
		done := runPipe(proxyA, proxyB, idle)
		go func() {
			chunk := make([]byte, 64<<10)
			for {
				if _, err := server.Write(chunk); err != nil {
					return
				}
			}
		}()
		if _, err := io.ReadFull(client, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		client.SetLinger(0)
		client.Close()
		if r := wait(t, done); r.Err == nil || r.ErrSide != SideA {
			t.Fatalf("idle %v: relay result %+v, want an error on side a", idle, r)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	_, proxyA := loopbacktest.TCPPair(t)
	proxyB, _ := loopbacktest.TCPPair(t)
	r := wait(t, runPipe(proxyA, proxyB, 50*time.Millisecond))
	if !errors.Is(r.Err, ErrIdle) {
		t.Fatalf("err = %v, want ErrIdle", r.Err)
	}
}

// TestResetSeenAfterWriteIsPassedOn: a peer's reset is reported once, to the first system call
// after it. When a write to the connection takes it, a read there sees a clean end; the relay must
// still pass the reset on, not a FIN that would make an aborted request look finished.
func TestResetSeenAfterWriteIsPassedOn(t *testing.T) {
	client, proxyA := loopbacktest.TCPPair(t)
	proxyB, server := loopbacktest.TCPPair(t)
	proxyA.Write([]byte("never read by the client"))
	client.SetLinger(0)
	client.Close() // a reset, since data is unread
	deadline := time.Now().Add(10 * time.Second)
	for !wasReset(proxyA) {
		if time.Now().After(deadline) {
			t.Fatal("the reset did not arrive")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := proxyA.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after the reset: %v, want it to take the reset", err)
	}
	var aborted error
	var bShut, aShut atomic.Bool
	copyHalf(half{proxyB, SideB, &bShut}, half{proxyA, SideA, &aShut}, nil, func(err error, _ Side) { aborted = err; Abort(proxyB) })
	if !errors.Is(aborted, syscall.ECONNRESET) {
		t.Fatalf("the relay ended with %v, want the reset passed on", aborted)
	}
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the far end read %v, want a reset", err)
	}

	// A clean end stays one.
	client, proxyA = loopbacktest.TCPPair(t)
	proxyB, server = loopbacktest.TCPPair(t)
	client.Close()
	aborted = nil
	copyHalf(half{proxyB, SideB, &bShut}, half{proxyA, SideA, &aShut}, nil, func(err error, _ Side) { aborted = err })
	if aborted != nil || wasReset(proxyA) {
		t.Fatalf("a FIN ended the relay with %v", aborted)
	}
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the far end read %v, want EOF", err)
	}
}
