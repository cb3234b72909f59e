// Package connectclient opens TCP tunnels through an HTTP CONNECT proxy: any proxy given by URL, or
// a swarm-proxy broker reached with a session ticket. It turns the proxy's refusals (authentication,
// policy, unreachable target) into one-line errors that carry the proxy's own reason.
package connectclient

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/agentenv"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

// DefaultTimeout bounds connecting to the proxy and waiting for its answer to CONNECT when
// Dialer.Timeout is zero. The proxy's own dial timeout (10 s by default) fits inside it.
const DefaultTimeout = 30 * time.Second

// Dialer opens tunnels through one proxy.
type Dialer struct {
	// Proxy is the proxy's host:port.
	Proxy string
	// User and Password, when User is set, are sent as Basic Proxy-Authorization.
	User, Password string
	// Timeout bounds the connect to the proxy plus its answer; zero means DefaultTimeout.
	Timeout time.Duration
}

// FromURL returns a Dialer for a proxy URL http://[user:pass@]host:port.
func FromURL(raw string) (*Dialer, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("proxy URL: %w", err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("proxy URL %q: scheme must be http (an HTTP CONNECT proxy such as swarm-proxy proxy)", u.Redacted())
	}
	if u.Port() == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("proxy URL %q: needs a host and a port, like http://127.0.0.1:8080", u.Redacted())
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("proxy URL %q: must not have a path", u.Redacted())
	}
	d := &Dialer{Proxy: u.Host}
	if u.User != nil {
		d.User = u.User.Username()
		d.Password, _ = u.User.Password()
	}
	return d, nil
}

// FromTicket returns a Dialer for a broker, authenticating with the ticket in file (as written by
// `swarm-proxy ticket --json`). broker, when not empty, overrides the ticket's broker_addr.
func FromTicket(file, broker string) (*Dialer, error) {
	t, err := agentenv.LoadTicket(file, time.Now())
	if err != nil {
		return nil, err
	}
	if broker == "" {
		broker = t.BrokerAddr
	}
	if broker == "" {
		return nil, fmt.Errorf("ticket %s: no broker_addr; give the broker's proxy address with --broker HOST:PORT", file)
	}
	broker = strings.TrimSuffix(strings.TrimPrefix(broker, "http://"), "/")
	if _, _, err := net.SplitHostPort(broker); err != nil {
		return nil, fmt.Errorf("broker address %q: %w", broker, err)
	}
	return &Dialer{Proxy: broker, User: t.SessionID, Password: t.Token}, nil
}

// Kind classifies tunnel failures.
type Kind int

// Kinds of failure.
const (
	KindProxy       Kind = iota // the proxy itself could not be reached or spoke no HTTP
	KindAuth                    // 407: missing, wrong or expired credentials
	KindBlocked                 // 403: refused by the proxy's policy or client check
	KindUnreachable             // 502/503: the proxy could not reach the target
	KindTimeout                 // 504: the target did not answer the proxy in time
	KindOther                   // any other status
)

// Error is a tunnel the proxy did not open. Its message is one line fit for a terminal.
type Error struct {
	Kind      Kind
	Target    string
	Proxy     string
	Status    int    // HTTP status of the proxy's answer; 0 for KindProxy
	Reason    string // the proxy's reason (X-Swarm-Proxy-Decision/-Error, body, or status text)
	Fix       string // what to change, when the proxy said
	RequestID string
	Err       error // for KindProxy: the network error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "connect %s via %s: ", e.Target, e.Proxy)
	switch e.Kind {
	case KindProxy:
		fmt.Fprintf(&b, "cannot use the proxy: %v", e.Err)
		return b.String()
	case KindAuth:
		b.WriteString("proxy authentication failed")
	case KindBlocked:
		b.WriteString("blocked by the proxy")
	case KindUnreachable:
		b.WriteString("the proxy could not reach the target")
	case KindTimeout:
		b.WriteString("the target did not answer the proxy in time")
	default:
		b.WriteString("the proxy refused the tunnel")
	}
	fmt.Fprintf(&b, " (%d)", e.Status)
	if e.Reason != "" {
		b.WriteString(": " + e.Reason)
	}
	if e.Fix != "" {
		b.WriteString("; fix: " + e.Fix)
	}
	if e.RequestID != "" {
		b.WriteString(" [request " + e.RequestID + "]")
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

func (e *Error) Unwrap() error { return e.Err }

// Dial opens a tunnel to target (host:port) and returns it once the proxy answered 200. The
// returned connection supports CloseWrite when the underlying TCP connection does.
func (d *Dialer) Dial(ctx context.Context, target string) (net.Conn, error) {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	proxyErr := func(err error) error {
		return &Error{Kind: KindProxy, Target: target, Proxy: d.Proxy, Err: err}
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", d.Proxy)
	if err != nil {
		return nil, proxyErr(err)
	}
	// The context bounds the whole exchange: closing the connection unblocks reads and writes.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	conn, err := d.handshake(c, target)
	if !stop() {
		err = errors.Join(err, fmt.Errorf("no answer to CONNECT within %s: %w", timeout, ctx.Err()))
	}
	if err != nil {
		c.Close()
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, proxyErr(err)
	}
	return conn, nil
}

func (d *Dialer) handshake(c net.Conn, target string) (net.Conn, error) {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: target},
		Host:   target,
		Header: http.Header{"User-Agent": {"swarm-proxy-connect"}},
	}
	if d.User != "" {
		cred := base64.StdEncoding.EncodeToString([]byte(d.User + ":" + d.Password))
		req.Header.Set("Proxy-Authorization", "Basic "+cred)
	}
	if err := req.Write(c); err != nil {
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("read CONNECT answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
		resp.Body.Close()
		return nil, refusal(d.Proxy, target, resp, string(body))
	}
	// A server that speaks first (SSH) may have its first bytes in the reader's buffer already.
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// refusal turns a non-200 answer into an *Error, preferring swarm-proxy's headers, then its
// plain-text body, then the status text.
func refusal(proxyAddr, target string, resp *http.Response, body string) *Error {
	e := &Error{Target: target, Proxy: proxyAddr, Status: resp.StatusCode, RequestID: resp.Header.Get(proxy.HeaderRequestID)}
	switch resp.StatusCode {
	case http.StatusProxyAuthRequired:
		e.Kind = KindAuth
	case http.StatusForbidden:
		e.Kind = KindBlocked
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		e.Kind = KindUnreachable
	case http.StatusGatewayTimeout:
		e.Kind = KindTimeout
	default:
		e.Kind = KindOther
	}
	for _, h := range []string{proxy.HeaderDecision, proxy.HeaderError} {
		if r, ok := headerReason(resp.Header.Get(h)); ok {
			e.Reason = r
			break
		}
	}
	for _, line := range strings.Split(body, "\n") {
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "reason":
			if e.Reason == "" {
				e.Reason = strings.TrimSpace(v)
			}
		case "fix":
			e.Fix = strings.TrimSpace(v)
		}
	}
	if e.Reason == "" {
		e.Reason = http.StatusText(resp.StatusCode)
	}
	return e
}

// headerReason extracts reason="..." from an X-Swarm-Proxy-Decision or -Error header value
// such as: deny; code=no_rule_matched; rule=r1; reason="no allow rule matches x:22".
func headerReason(v string) (string, bool) {
	_, quoted, ok := strings.Cut(v, "reason=")
	if !ok {
		return "", false
	}
	r, err := strconv.Unquote(strings.TrimSpace(quoted))
	if err != nil {
		return "", false
	}
	return r, true
}

// bufferedConn reads what the CONNECT answer's reader had already buffered before reading the
// connection again.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) {
	if b.r.Buffered() > 0 {
		return b.r.Read(p)
	}
	return b.Conn.Read(p)
}

// CloseWrite half-closes the tunnel when the underlying connection can.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}
