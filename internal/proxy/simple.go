package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// The simple path forwards the requests agents send most (GET, HEAD and OPTIONS with no body, over
// plain http) on the handler's own goroutine: it writes the request to a kept-alive upstream
// connection and reads the response back with net/http's own parser. httputil.ReverseProxy with
// http.Transport does the same work with two more goroutines per upstream connection and a
// hand-off to each per request, which cost about a quarter of the proxy's CPU per request. Every
// other request (a body, an upgrade, an Expect, https) keeps the ReverseProxy path.

// simpleRequest reports whether r can take the simple path: no body, no upgrade, no Expect, plain
// http, and a method that is safe to send again when a kept-alive connection turns out closed.
func simpleRequest(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return r.URL.Scheme == "http" && r.ContentLength == 0 && len(r.TransferEncoding) == 0 &&
		r.Header.Get("Upgrade") == "" && r.Header.Get("Expect") == ""
}

// hopHeaders are the hop-by-hop headers of RFC 9110 §7.6.1 and the proxy-specific ones: a proxy
// never passes them on.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopHeaders deletes the hop-by-hop headers from h, and the headers that Connection names.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		delete(h, name)
	}
}

// writeRequestHead writes the head of r as the target gets it, with the same changes ReverseProxy
// makes on the other path: hop-by-hop headers and the client's forwarding headers removed, TE
// reduced to trailers, no credentials, no User-Agent of Go's own, and Via added. Header values
// come from a request net/http's parser read, so they hold no line breaks.
func writeRequestHead(bw *bufio.Writer, r *http.Request) error {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(requestHost(r))
	bw.WriteString("\r\n")
	named := r.Header["Connection"]
	for k, vs := range r.Header {
		if !forwardedHeader(k) || k == "Host" || k == "Content-Length" || headerHasToken(named, k) {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if headerHasToken(r.Header["Te"], "trailers") {
		bw.WriteString("Te: trailers\r\n")
	}
	_, err := bw.WriteString("Via: 1.1 swarm-proxy\r\n\r\n")
	return err
}

// requestHost is the host a request names, as its Host header gives it to the target: in ASCII,
// as Request.Write sends it. The host has passed policy.ParseTarget.
func requestHost(r *http.Request) string {
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	if ascii, err := httpguts.PunycodeHostPort(host); err == nil {
		return ascii
	}
	return host
}

// clientForwardingHeaders describe how the client reached the proxy; ReverseProxy drops them too.
var clientForwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// forwardedHeader reports whether a request header (in canonical form) goes on to the target: not
// a hop-by-hop one, nor one that describes how the client reached the proxy.
func forwardedHeader(k string) bool {
	return !slices.Contains(hopHeaders, k) && !slices.Contains(clientForwardingHeaders, k)
}

func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if t, _, _ = strings.Cut(t, ";"); strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// serveSimple forwards r on the simple path and reports whether the response was aborted in the
// middle of its body.
func (s *Server) serveSimple(w *countingWriter, r *http.Request, st *forwardState, pol *policy.Policy) (aborted bool) {
	key := poolKey{session: st.req.Session, policy: pol, target: st.req.Target}
	resp, uc, err := s.roundTrip(r.Context(), w, key, r, st)
	if err != nil {
		st.failure = s.forwardFailure(r, err)
		s.writeFailure(w, r, st.req, st.failure)
		return false
	}
	h := w.Header()
	removeHopHeaders(resp.Header)
	for k, v := range resp.Header {
		h[k] = v
	}
	h.Add("Via", "1.1 swarm-proxy")
	w.WriteHeader(resp.StatusCode)
	err = copyBody(w, resp, st)
	resp.Body.Close()
	if err != nil {
		uc.close()
		return true
	}
	for k, v := range resp.Trailer {
		h[http.TrailerPrefix+k] = v
	}
	uc.release(resp)
	return false
}

// copyBody copies resp's body to w, flushing every chunk when the length is unknown (a stream), as
// ReverseProxy does. A failed read of the body is remembered in st for the log.
func copyBody(w *countingWriter, resp *http.Response, st *forwardState) error {
	bp := forwardBufs.Get().(*[]byte)
	defer forwardBufs.Put(bp)
	buf := *bp
	stream := resp.ContentLength == -1
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct == "text/event-stream" {
		stream = true
	}
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if stream {
				w.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			st.bodyErr = rerr
			return rerr
		}
	}
}

// maxInformational bounds the 1xx responses passed on before the final one, as http.Transport does.
const maxInformational = 5

// errStale is a kept-alive connection that failed before any byte of a response came back: the
// target closed it while it was idle. The request is sent again on another connection.
var errStale = errors.New("kept-alive connection closed by the target")

// roundTrip sends r to the target over a pooled or new connection and returns the final response,
// having passed any informational (1xx) response on to w.
func (s *Server) roundTrip(ctx context.Context, w http.ResponseWriter, key poolKey, r *http.Request, st *forwardState) (*http.Response, *upstreamConn, error) {
	for {
		uc := s.pool.get(key)
		reused := uc != nil
		if uc == nil {
			c, err := s.dialUpstream(ctx, st.req, key.target)
			if err != nil {
				return nil, nil, err
			}
			uc = &upstreamConn{pool: s.pool, key: key, conn: c}
			uc.head.r = c
			uc.br = bufio.NewReaderSize(&uc.head, 4<<10)
		}
		st.conn.Store(uc.conn)
		resp, err := uc.roundTrip(ctx, w, r, orDefault(s.UpstreamTimeout, DefaultUpstreamTimeout))
		if err == nil {
			return resp, uc, nil
		}
		uc.close()
		if !reused || !errors.Is(err, errStale) || ctx.Err() != nil {
			return nil, nil, err
		}
	}
}

// dialUpstream decides target under the policy in force and dials it.
func (s *Server) dialUpstream(ctx context.Context, req *Request, target policy.Target) (*decidedConn, error) {
	dreq := &dial.Request{Target: target, ID: req.ID, Session: req.Session, Client: req.Client.Addr().String(),
		Decision: s.Policy.Load().Decide(target, nil)}
	c, err := s.Dialer.Dial(ctx, dreq)
	if err != nil {
		return nil, err
	}
	return &decidedConn{Conn: c, decision: dreq.Decision}, nil
}

// upstreamConn is a connection to a target that the simple path keeps alive between requests.
type upstreamConn struct {
	pool      *upstreamPool
	key       poolKey
	conn      *decidedConn
	head      headLimit // between conn and br
	br        *bufio.Reader
	idleSince time.Time
	stop      func() bool // ends the watch on the client's context
}

var (
	pastDeadline   = time.Unix(1, 0)
	requestWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// roundTrip writes r's head and reads the response head within timeout. Until the response is
// released, the end of ctx (the client went away) aborts the connection.
func (uc *upstreamConn) roundTrip(ctx context.Context, w http.ResponseWriter, r *http.Request, timeout time.Duration) (*http.Response, error) {
	uc.stop = context.AfterFunc(ctx, func() { uc.conn.SetReadDeadline(pastDeadline) })
	uc.conn.SetReadDeadline(time.Now().Add(timeout))
	bw := requestWriters.Get().(*bufio.Writer)
	bw.Reset(uc.conn)
	err := writeRequestHead(bw, r)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	requestWriters.Put(bw)
	if err != nil {
		return nil, stale(err)
	}
	uc.head.n = maxResponseHeadBytes
	defer func() { uc.head.n = math.MaxInt64 }()
	for range maxInformational + 1 {
		if _, err := uc.br.Peek(1); err != nil {
			return nil, stale(err)
		}
		resp, err := http.ReadResponse(uc.br, r)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("the target switched protocols, but no upgrade was asked for")
		case resp.StatusCode < 200:
			h := w.Header()
			for k, v := range resp.Header {
				h[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			clear(h)
			continue
		}
		uc.conn.SetReadDeadline(time.Time{})
		return resp, nil
	}
	return nil, fmt.Errorf("more than %d informational responses", maxInformational)
}

// maxResponseHeadBytes bounds a response head from the target (with its 1xx responses), as
// http.Transport's MaxResponseHeaderBytes does on the other path.
const maxResponseHeadBytes = 1 << 20

// headLimit is a reader that fails once n bytes have been read from r.
type headLimit struct {
	r io.Reader
	n int64
}

var errHeadTooLarge = fmt.Errorf("the response head from the target is over %d bytes", maxResponseHeadBytes)

func (l *headLimit) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// stale marks an error on a connection that received nothing back as errStale, so that the
// request is retried when the connection was a kept-alive one.
func stale(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return fmt.Errorf("%w: %w", errStale, err)
}

// release returns the connection to the pool once resp's body has been read to its end, when the
// connection can carry another request.
func (uc *upstreamConn) release(resp *http.Response) {
	if !uc.stop() || resp.Close || uc.br.Buffered() > 0 {
		uc.close()
		return
	}
	uc.pool.put(uc)
}

func (uc *upstreamConn) close() {
	if uc.stop != nil {
		uc.stop()
	}
	uc.conn.Close()
}

// poolKey is what a kept-alive connection may be reused for: the same target, for the same session,
// under the policy it was dialed under.
type poolKey struct {
	session string
	policy  *policy.Policy
	target  policy.Target
}

// Bounds of the pool of kept-alive upstream connections.
const (
	maxIdlePerTarget = 64
	maxIdle          = 1024
)

// upstreamPool keeps the simple path's idle upstream connections. A connection idle for
// upstreamIdle is closed by a sweep that runs while any connection is idle; one dialed under an
// earlier policy is closed on reload (retire) or when it comes back from its request.
type upstreamPool struct {
	current func() *policy.Policy
	mu      sync.Mutex
	idle    map[poolKey][]*upstreamConn
	n       int
	sweeper *time.Timer
	closed  bool
}

func newUpstreamPool(current func() *policy.Policy) *upstreamPool {
	return &upstreamPool{current: current, idle: map[poolKey][]*upstreamConn{}}
}

// get takes the most recently used idle connection for key, if there is one.
func (p *upstreamPool) get(key poolKey) *upstreamConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[key]
	if len(list) == 0 {
		return nil
	}
	uc := list[len(list)-1]
	list[len(list)-1] = nil
	if len(list) == 1 {
		delete(p.idle, key)
	} else {
		p.idle[key] = list[:len(list)-1]
	}
	p.n--
	return uc
}

func (p *upstreamPool) put(uc *upstreamConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || uc.key.policy != p.current() || p.n >= maxIdle || len(p.idle[uc.key]) >= maxIdlePerTarget {
		uc.conn.Close()
		return
	}
	uc.idleSince = time.Now()
	p.idle[uc.key] = append(p.idle[uc.key], uc)
	p.n++
	if p.sweeper == nil {
		p.sweeper = time.AfterFunc(upstreamIdle, p.sweep)
	}
}

// sweep closes the connections idle for upstreamIdle, and runs again later while any are left.
func (p *upstreamPool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeIf(func(uc *upstreamConn) bool { return time.Since(uc.idleSince) >= upstreamIdle })
	p.sweeper = nil
	if p.n > 0 && !p.closed {
		p.sweeper = time.AfterFunc(upstreamIdle/2, p.sweep)
	}
}

// retire closes the idle connections dialed under any policy but current.
func (p *upstreamPool) retire(current *policy.Policy) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeIf(func(uc *upstreamConn) bool { return uc.key.policy != current })
}

// closeAll closes every idle connection and keeps none from now on.
func (p *upstreamPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.closeIf(func(*upstreamConn) bool { return true })
}

// closeIf closes and drops the idle connections that match; p.mu is held.
func (p *upstreamPool) closeIf(match func(*upstreamConn) bool) {
	for key, list := range p.idle {
		kept := list[:0]
		for _, uc := range list {
			if match(uc) {
				uc.conn.Close()
				p.n--
			} else {
				kept = append(kept, uc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, key)
		} else {
			p.idle[key] = kept
		}
	}
}
