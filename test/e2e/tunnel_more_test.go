package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// payloadServer answers every HTTP request with payload as a close-delimited body (no
// Content-Length, no chunking): only a reset, not a clean end, can tell a client that the body was
// cut short, so a relay that turns a failure into a FIN makes a truncated body look complete.
// A holding server writes half the payload, counts the response in held, and writes the rest once
// release is closed; like net/http, it gives up on a response whose client went away while it
// held, counting whether the client's side ended with a FIN (gaveUpEOF) or a reset (gaveUpReset).
type payloadServer struct {
	addr                   string
	port                   int
	payload                []byte
	held                   atomic.Int64
	gaveUpEOF, gaveUpReset atomic.Int64
	release                chan struct{}
}

func startPayloadServer(t *testing.T, hold bool) *payloadServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &payloadServer{addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port, release: make(chan struct{})}
	s.payload = make([]byte, 256<<10)
	for i := range s.payload {
		s.payload[i] = byte(i*7 + i>>8) // not one repeated byte: a misplaced chunk shows
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(done); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n")
				rest := s.payload
				if hold {
					half := len(s.payload) / 2
					if _, err := c.Write(s.payload[:half]); err != nil {
						return
					}
					s.held.Add(1)
					gone := make(chan error, 1)
					go func() {
						_, err := c.Read(make([]byte, 1)) // ends when c closes, at the latest
						gone <- err
					}()
					select {
					case <-s.release:
					case err := <-gone:
						if errors.Is(err, syscall.ECONNRESET) {
							s.gaveUpReset.Add(1)
						} else {
							s.gaveUpEOF.Add(1)
						}
						return
					case <-done:
						return
					}
					rest = s.payload[half:]
				}
				c.Write(rest)
			}()
		}
	}()
	return s
}

// getFunc fetches /payload from target (host:port) through the broker with the session's ticket.
type getFunc func(ctx context.Context, target string) ([]byte, error)

// brokerGet returns a getFunc that goes through the broker by method: CONNECT (one tunnel, and so
// one stream, per request) or GET (plain-HTTP forwarding). A non-200 answer is an error.
func brokerGet(t *testing.T, method, brokerAddr string, tk map[string]string) getFunc {
	t.Helper()
	if method == "CONNECT" {
		auth := base64.StdEncoding.EncodeToString([]byte(proxyUser(tk)))
		return func(ctx context.Context, target string) ([]byte, error) {
			return connectGet(ctx, brokerAddr, auth, target, "/payload")
		}
	}
	proxyURL := &url.URL{Scheme: "http", Host: brokerAddr, User: url.UserPassword(tk["session_id"], tk["token"])}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	return func(ctx context.Context, target string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+target+"/payload", nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		return body, err
	}
}

// connectGet opens a CONNECT tunnel through the broker and sends GET path in it.
func connectGet(ctx context.Context, brokerAddr, basicAuth, target, path string) ([]byte, error) {
	c, resp, err := connectStart(ctx, brokerAddr, basicAuth, target, path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return body, err
}

// connectStart opens a CONNECT tunnel through the broker, sends GET path in it and returns the
// connection and the response, whose body is still to be read.
func connectStart(ctx context.Context, brokerAddr, basicAuth, target, path string) (*net.TCPConn, *http.Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", brokerAddr)
	if err != nil {
		return nil, nil, err
	}
	c := conn.(*net.TCPConn)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	fail := func(err error) (*net.TCPConn, *http.Response, error) { c.Close(); return nil, nil, err }
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, basicAuth)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fail(fmt.Errorf("read CONNECT answer: %w", err))
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("CONNECT answered %s: %s", resp.Status, resp.Header.Get("X-Swarm-Proxy-Error")))
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, target); err != nil {
		return fail(err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		return fail(fmt.Errorf("read response: %w", err))
	}
	return c, resp, nil
}

// waitFor polls cond every 10 ms until it holds, failing the test after waitTimeout with the last
// state cond described.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last state: %s", waitTimeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fdCount is the number of file descriptors pid has open.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// metricTotal sums every series of a metric family (all label values) on the broker's /metrics.
func (b *brokerEnv) metricTotal(name string) float64 {
	b.t.Helper()
	resp, err := http.Get("http://" + b.Admin + "/metrics")
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`(?:\{[^}]*\})? (\S+)$`).FindAllSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		sum += v
	}
	return sum
}

var streamEndRE = regexp.MustCompile(`(?m)msg="stream (done|failed)"`)

// streamsEnded counts the streams a provider logged as finished ("stream done" or "stream failed").
func streamsEnded(p *Proc) int { return len(streamEndRE.FindAllString(p.Stderr(), -1)) }

// fetchResult is the outcome of one request through the broker.
type fetchResult struct {
	afterNotice bool // started after the broker had noticed the kill
	body        []byte
	err         error
}

// TestTunnelProviderKilledDuringRequests runs a bounded loop of requests through a session with two
// providers and SIGKILLs one of them while the loop and some held downloads are in flight. Requests
// in flight at the kill may fail, but visibly: none may return a short body as a success. Once the
// broker has counted the provider gone, every request must succeed through the other.
func TestTunnelProviderKilledDuringRequests(t *testing.T) {
	for _, method := range []string{"CONNECT", "GET"} {
		t.Run(method, func(t *testing.T) { testKilledDuringRequests(t, method) })
	}
}

func testKilledDuringRequests(t *testing.T, method string) {
	const (
		maxRequests    = 200 // the loop never sends more
		maxBeforeKill  = 120 // it pauses after this many until the kill has been noticed
		wantAfter      = 40  // it stops after this many requests that started after the notice
		requestTimeout = 10 * time.Second
		maxHolds       = 8
	)
	fast, hold := startPayloadServer(t, false), startPayloadServer(t, true)
	b := startBroker(t)
	tf, tk := b.ticket("run", "1h")
	victim := b.provider(tf, "run", 1)
	survivor := b.provider(tf, "run", 2)
	victimID, survivorID := providerID(t, victim), providerID(t, survivor)
	get := brokerGet(t, method, b.Addr, tk)

	var (
		completed atomic.Int64
		noticedCh = make(chan struct{})
		stop      = make(chan struct{})
		loopDone  = make(chan struct{})
		results   = make(chan fetchResult, maxRequests)
	)
	noticed := func() bool {
		select {
		case <-noticedCh:
			return true
		default:
			return false
		}
	}
	go func() {
		defer close(loopDone)
		before, after := 0, 0
		for range maxRequests {
			if !noticed() && before == maxBeforeKill {
				select {
				case <-noticedCh:
				case <-stop:
					return
				}
			}
			select {
			case <-stop:
				return
			default:
			}
			r := fetchResult{afterNotice: noticed()}
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			r.body, r.err = get(ctx, fast.addr)
			cancel()
			results <- r
			completed.Add(1)
			if !r.afterNotice {
				before++
			} else if after++; after == wantAfter {
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-loopDone })

	// The loop is running and goes through both providers.
	Eventually(t, "loop requests through both providers", func() bool {
		used := map[string]bool{}
		for _, r := range b.Records() {
			used[r.Provider] = true
		}
		return completed.Load() >= 10 && used[victimID] && used[survivorID]
	})

	// Hold downloads open until the victim carries at least one: the broker sends a new stream to
	// the provider with the fewest open, so this takes a few at most.
	holdResults := make(chan fetchResult, maxHolds)
	launched := 0
	for tcpConnsTo(t, victim.Pid(), hold.port) == 0 {
		if launched == maxHolds {
			t.Fatalf("%d held downloads, none through provider %s", launched, victimID)
		}
		launched++
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
			defer cancel()
			body, err := get(ctx, hold.addr)
			holdResults <- fetchResult{body: body, err: err}
		}()
		n := int64(launched)
		Eventually(t, fmt.Sprintf("%d held downloads", n), func() bool { return hold.held.Load() == n })
	}
	victimHeld, survivorHeld := tcpConnsTo(t, victim.Pid(), hold.port), tcpConnsTo(t, survivor.Pid(), hold.port)
	if victimHeld+survivorHeld != launched {
		t.Fatalf("providers hold %d+%d connections to the target, want %d", victimHeld, survivorHeld, launched)
	}

	victim.Signal(syscall.SIGKILL)
	b.waitProviders("run", 1)
	close(noticedCh)
	close(hold.release)

	failedHolds := 0
	for range launched {
		var r fetchResult
		select {
		case r = <-holdResults:
		case <-time.After(3 * waitTimeout):
			t.Fatal("a held download never finished")
		}
		switch {
		case r.err != nil:
			failedHolds++
		case !bytes.Equal(r.body, hold.payload):
			t.Errorf("held download reported success with %d of %d bytes (truncated or corrupt)", len(r.body), len(hold.payload))
		}
	}
	// The victim's downloads break off; the survivor's are untouched by the kill.
	if failedHolds != victimHeld {
		t.Errorf("%d held downloads failed, want %d (those through the killed provider); %d went through the survivor", failedHolds, victimHeld, survivorHeld)
	}

	select {
	case <-loopDone:
	case <-time.After(time.Duration(wantAfter) * requestTimeout):
		t.Fatal("the request loop did not finish")
	}
	close(results)
	before, beforeFailed, after, afterFailed := 0, 0, 0, 0
	for r := range results {
		ok := r.err == nil && bytes.Equal(r.body, fast.payload)
		if r.err == nil && !ok {
			t.Errorf("a request reported success with %d of %d bytes (truncated or corrupt)", len(r.body), len(fast.payload))
		}
		if !r.afterNotice {
			before++
			if !ok {
				beforeFailed++
			}
			continue
		}
		after++
		if !ok {
			if afterFailed++; afterFailed <= 3 {
				t.Errorf("request after the broker noticed the kill failed: %v", r.err)
			}
		}
	}
	if afterFailed > 0 {
		t.Errorf("%d of %d requests after the broker noticed the kill failed", afterFailed, after)
	}
	if after != wantAfter {
		t.Fatalf("%d requests after the kill was noticed, want %d", after, wantAfter)
	}
	t.Logf("%s: %d requests before the kill was noticed (%d failed visibly), %d after; %d of %d held downloads went through the killed provider",
		method, before, beforeFailed, after, victimHeld, launched)
	b.waitStreamsClosed("run")
}

// TestTunnelProviderLeavesNoResidue checks that a provider gives back what streams take: after a
// storm of concurrent tunnels, after the other provider of its session is killed mid-transfer, and
// after workers abandon downloads half way (a reset must reach the target as a reset, a FIN as a
// FIN), the surviving provider's open files and target connections return to their baseline, it logs an end for every stream the broker gave it, and the
// broker's streams gauge and goroutines return to theirs. (The provider serves no metrics, so its
// goroutines cannot be counted from outside; every stream holds a target socket, which can.)
func TestTunnelProviderLeavesNoResidue(t *testing.T) {
	const storm = 100
	warm, stormSrv, killSrv, abandonSrv := startPayloadServer(t, false), startPayloadServer(t, true), startPayloadServer(t, true), startPayloadServer(t, true)
	b := startBroker(t)
	tf, tk := b.ticket("residue", "1h")
	keep := b.provider(tf, "residue", 1)
	victim := b.provider(tf, "residue", 2)
	keepID, victimID := providerID(t, keep), providerID(t, victim)
	_, brokerPort, _ := net.SplitHostPort(b.ProviderAddr)
	bp, _ := strconv.Atoi(brokerPort)
	get := brokerGet(t, "CONNECT", b.Addr, tk)

	// Warm up both providers so that what the runtime opens once is in the baseline.
	for range 4 {
		if body, err := get(context.Background(), warm.addr); err != nil || !bytes.Equal(body, warm.payload) {
			t.Fatalf("warm-up: %d bytes, %v", len(body), err)
		}
	}
	Eventually(t, "warm-up connections closed", func() bool {
		return tcpConnsTo(t, keep.Pid(), warm.port) == 0 && tcpConnsTo(t, victim.Pid(), warm.port) == 0
	})
	b.waitStreamsClosed("residue")
	keepFDs := fdCount(t, keep.Pid())
	gor, _ := b.metric("go_goroutines")

	// settled waits until the surviving provider and the broker are back to their baseline.
	settled := func(phase string, targets ...*payloadServer) {
		t.Helper()
		waitFor(t, phase+": provider and broker back to baseline", func() (bool, string) {
			conns := 0
			for _, s := range targets {
				conns += tcpConnsTo(t, keep.Pid(), s.port)
			}
			fds := fdCount(t, keep.Pid())
			streams, _ := b.metric(`swarm_proxy_tunnel_streams{session="residue"}`)
			g, _ := b.metric("go_goroutines")
			state := fmt.Sprintf("provider: %d connections to the targets, %d files open (baseline %d); broker: %v streams, %v goroutines (baseline %v)",
				conns, fds, keepFDs, streams, g, gor)
			return conns == 0 && fds <= keepFDs && streams == 0 && g <= gor+5, state
		})
		if n := tcpConnsTo(t, keep.Pid(), bp); n != 1 {
			t.Fatalf("%s: provider holds %d connections to the broker, want 1", phase, n)
		}
		// Every stream the broker logged through this provider has ended on the provider too.
		waitFor(t, phase+": provider logged the end of every stream", func() (bool, string) {
			n := 0
			for _, r := range b.Records() {
				if r.Provider == keepID {
					n++
				}
			}
			ended := streamsEnded(keep)
			return ended == n, fmt.Sprintf("broker logged %d streams through %s, the provider logged %d ended", n, keepID, ended)
		})
	}

	// A storm of concurrent tunnels, all open at once across both providers.
	errs := make(chan error, storm)
	for range storm {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
			defer cancel()
			body, err := get(ctx, stormSrv.addr)
			if err == nil && !bytes.Equal(body, stormSrv.payload) {
				err = fmt.Errorf("success with %d of %d bytes", len(body), len(stormSrv.payload))
			}
			errs <- err
		}()
	}
	Eventually(t, fmt.Sprintf("%d tunnels open at once", storm), func() bool { return stormSrv.held.Load() == storm })
	if k, v := tcpConnsTo(t, keep.Pid(), stormSrv.port), tcpConnsTo(t, victim.Pid(), stormSrv.port); k+v != storm || k == 0 || v == 0 {
		t.Fatalf("providers hold %d+%d connections to the target, want %d spread over both", k, v, storm)
	}
	if n := fdCount(t, keep.Pid()); n <= keepFDs {
		t.Fatalf("provider has %d files open with tunnels open, baseline %d: the measure sees nothing", n, keepFDs)
	}
	close(stormSrv.release)
	for range storm {
		if err := <-errs; err != nil {
			t.Errorf("storm tunnel: %v", err)
		}
	}
	settled("after the storm", stormSrv)

	// Downloads through both providers; the victim is killed while they are half done.
	heldResults := make(chan fetchResult, 8)
	launched := 0
	for tcpConnsTo(t, keep.Pid(), killSrv.port) == 0 || tcpConnsTo(t, victim.Pid(), killSrv.port) == 0 {
		if launched == 8 {
			t.Fatal("8 held downloads did not spread over both providers")
		}
		launched++
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
			defer cancel()
			body, err := get(ctx, killSrv.addr)
			heldResults <- fetchResult{body: body, err: err}
		}()
		n := int64(launched)
		Eventually(t, fmt.Sprintf("%d held downloads", n), func() bool { return killSrv.held.Load() == n })
	}
	throughVictim := tcpConnsTo(t, victim.Pid(), killSrv.port)
	victim.Signal(syscall.SIGKILL)
	b.waitProviders("residue", 1)

	// A worker abandons a download half way, after reading exactly what the target sent. Killed
	// with data unread, a worker resets its connection: the provider must abort its target
	// connection (a reset the target sees), whatever the target does. Closing cleanly, it sends a
	// FIN, which must reach the target as one (the target then gives up, as net/http does).
	half := len(abandonSrv.payload) / 2
	for i, abort := range []bool{true, false} {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		c, resp, err := connectStart(ctx, b.Addr, base64.StdEncoding.EncodeToString([]byte(proxyUser(tk))), abandonSrv.addr, "/payload")
		if err != nil {
			cancel()
			t.Fatalf("abandoned download: %v", err)
		}
		_, err = io.ReadFull(resp.Body, make([]byte, half))
		cancel()
		if err != nil {
			t.Fatalf("abandoned download: reading the first half: %v", err)
		}
		if n := tcpConnsTo(t, keep.Pid(), abandonSrv.port); n != 1 {
			t.Fatalf("surviving provider holds %d connections to the abandoned target, want 1", n)
		}
		resetsBefore := abandonSrv.gaveUpReset.Load() // before the close: the target may see it at once
		if abort {
			c.SetLinger(0)
		}
		c.Close()
		var resets, eofs int64
		waitFor(t, "the target to see the worker go", func() (bool, string) {
			resets, eofs = abandonSrv.gaveUpReset.Load(), abandonSrv.gaveUpEOF.Load()
			return resets+eofs == int64(i+1), fmt.Sprintf("target saw %d resets and %d FINs", resets, eofs)
		})
		if sawReset := resets > resetsBefore; abort && !sawReset {
			t.Errorf("the worker reset its connection, but the target saw a FIN: an aborted request looks finished to it")
		} else if !abort && sawReset {
			t.Errorf("the worker closed cleanly, but the target saw a reset")
		}
	}
	if n := abandonSrv.held.Load(); n != 2 {
		t.Fatalf("the abandoning target held %d responses, want 2", n)
	}

	close(killSrv.release)
	failed := 0
	for range launched {
		r := <-heldResults
		switch {
		case r.err != nil:
			failed++
		case !bytes.Equal(r.body, killSrv.payload):
			t.Errorf("held download reported success with %d of %d bytes", len(r.body), len(killSrv.payload))
		}
	}
	if failed != throughVictim {
		t.Errorf("%d held downloads failed, want %d (those through the killed provider %s)", failed, throughVictim, victimID)
	}
	settled("after the kill and the abandoned download", killSrv, abandonSrv)
}

// TestTunnelForgedTokensNeverReachTheProvider: tokens of the right shape that are not valid for the
// session (a flipped MAC character, a moved expiry, another secret's token, another session's token)
// get 407 with Proxy-Authenticate and the verifier's reason, over CONNECT and plain HTTP, and an
// access-log record with error auth; the broker opens no stream and the target sees nothing.
func TestTunnelForgedTokensNeverReachTheProvider(t *testing.T) {
	var hits atomic.Int64
	target := startCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "pong from swarm-proxy test\n")
	}))
	b := startBroker(t)
	tf, tk := b.ticket("mine", "1h")
	prov := b.provider(tf, "mine", 1)
	_, theirs := b.ticket("theirs", "1h")

	foreignSecret := writeSecret(t, "foreign-secret", "another-secret-0123456789-0123456789-0123\n")
	r := Run(t, nil, binary, "ticket", "--session", "mine", "--ttl", "1h", "--secret-file", foreignSecret, "--json")
	var foreign struct{ Token string }
	if err := json.Unmarshal([]byte(r.Stdout), &foreign); r.Code != 0 || err != nil || foreign.Token == "" {
		t.Fatalf("ticket with another secret: exit %d, %v\n%s%s", r.Code, err, r.Stdout, r.Stderr)
	}

	f := strings.Split(tk["token"], ".")
	if len(f) != 6 || len(f[3]) != 11 || len(f[5]) != 43 {
		t.Fatalf("token %q is not v3.<role>.<expiry>.<nonce>.<fingerprint>.<mac>", tk["token"])
	}
	with := func(i int, v string) string {
		g := append([]string(nil), f...)
		g[i] = v
		return strings.Join(g, ".")
	}
	// other returns a base64url character other than c whose 6-bit value differs from c's in bit.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	other := func(c byte, bit int) string { return string(alphabet[strings.IndexByte(alphabet, c)^bit]) }
	// Flip the MAC's first character: it carries six bits of the first byte. The last character's
	// two low bits are padding, which a lenient decoder ignores: that spelling must be malformed.
	badMAC := with(5, other(f[5][0], 1)+f[5][1:])
	respelled := with(5, f[5][:42]+other(f[5][42], 1))
	exp, _ := strconv.ParseInt(f[2], 10, 64)
	movedExpiry := with(2, strconv.FormatInt(exp+3600, 10))
	promoted := with(1, "p")
	renonced := with(3, other(f[3][0], 1)+f[3][1:])
	var provTicket struct{ Token string }
	if data, err := os.ReadFile(b.providerTicket("mine", "1h")); err != nil || json.Unmarshal(data, &provTicket) != nil {
		t.Fatalf("provider ticket: %v", err)
	}

	// Sanity: the genuine token goes through, so the refusals below are the tokens' doing.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	auth := base64.StdEncoding.EncodeToString([]byte(proxyUser(tk)))
	if body, err := connectGet(ctx, b.Addr, auth, target, "/"); err != nil || string(body) != "pong from swarm-proxy test\n" {
		t.Fatalf("genuine token: %q, %v", body, err)
	}
	b.waitStreamsClosed("mine")
	Eventually(t, "the provider to log the end of the genuine stream", func() bool { return streamsEnded(prov) == 1 })
	opens := b.metricTotal("swarm_proxy_tunnel_opens_total")
	hitsBefore := hits.Load()
	provStderr := len(prov.Stderr())

	const notValid = "token is not valid (tampered, or issued with another secret)"
	tests := []struct {
		name, token, reason string
	}{
		{"MAC with one character flipped", badMAC, notValid},
		{"MAC spelled another way", respelled, "malformed token: the MAC is not 32 bytes of base64url"},
		{"expiry moved", movedExpiry, notValid},
		{"nonce changed", renonced, notValid},
		{"issued with another secret", foreign.Token, notValid},
		{"worker token relabelled as a provider's", promoted, notValid},
		{"token of another session", theirs["token"], "token was issued for another session"},
		{"provider ticket as proxy credentials", provTicket.Token, "token is for another role: this is a provider ticket and a worker ticket is needed here (swarm-proxy ticket --role worker)"},
	}
	for _, tt := range tests {
		for _, method := range []string{"CONNECT", "GET"} {
			t.Run(tt.name+"/"+method, func(t *testing.T) {
				resp, body := proxyRequest(t, b.Addr, method, target, "mine:"+tt.token)
				if resp.StatusCode != http.StatusProxyAuthRequired {
					t.Fatalf("status %s, want 407:\n%s", resp.Status, body)
				}
				if got := resp.Header.Get("Proxy-Authenticate"); !strings.HasPrefix(got, "Basic ") {
					t.Errorf("Proxy-Authenticate %q, want a Basic challenge", got)
				}
				if !strings.Contains(body, "reason: verify token: "+tt.reason) {
					t.Errorf("body does not give the reason %q:\n%s", tt.reason, body)
				}
				if d := resp.Header.Get("X-Swarm-Proxy-Decision"); !strings.Contains(d, "code=auth") || !strings.Contains(d, tt.reason) {
					t.Errorf("decision header %q, want code=auth and %q", d, tt.reason)
				}
				id := resp.Header.Get("X-Swarm-Proxy-Request-Id")
				if id == "" {
					t.Fatal("no request id header")
				}
				rec := b.WaitRecord(func(r accesslog.Record) bool { return r.RequestID == id })
				if rec.Status != 407 || rec.Error != "auth" || !strings.Contains(rec.Reason, tt.reason) || rec.Provider != "" || rec.Method != method {
					t.Fatalf("log record %+v, want %s, status 407, error auth, reason containing %q, no provider", rec, method, tt.reason)
				}
			})
		}
	}
	if got := b.metricTotal("swarm_proxy_tunnel_opens_total"); got != opens {
		t.Errorf("the broker's opens went from %v to %v: refused requests reached the tunnel", opens, got)
	}
	if got := hits.Load(); got != hitsBefore {
		t.Errorf("the target saw %d requests from refused workers", got-hitsBefore)
	}
	if s := prov.Stderr()[provStderr:]; strings.Contains(s, "stream") || strings.Contains(s, "open") {
		t.Errorf("the provider logged activity for refused requests:\n%s", s)
	}
}

// startCountingServer serves h on loopback and returns its host:port.
func startCountingServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// proxyRequest sends one proxy request (CONNECT target, or GET http://target/ping.txt) with Basic
// proxy credentials and returns the broker's answer; a CONNECT that succeeds is closed unused.
func proxyRequest(t *testing.T, brokerAddr, method, target, user string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", brokerAddr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	auth := base64.StdEncoding.EncodeToString([]byte(user))
	line := "CONNECT " + target
	if method == "GET" {
		line = "GET http://" + target + "/ping.txt"
	}
	fmt.Fprintf(c, "%s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", line, target, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	if method == http.MethodConnect && resp.StatusCode/100 == 2 {
		return resp, "" // a tunnel: no body to read
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp, string(body)
}
