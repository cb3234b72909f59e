// Package dial opens upstream connections. A Dialer is the only thing in swarm-proxy that connects
// to a target: the Direct dialer resolves a name once, checks every address against the policy and
// dials only checked addresses, so DNS rebinding cannot slip past; the tunnel package provides a
// Dialer that asks a provider to do the same on another machine.
package dial

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/hostaddr"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Request is what a front end asks a Dialer for.
type Request struct {
	Target  policy.Target
	ID      string // request id, for logs on both ends of a tunnel
	Session string // broker session, "" in proxy mode
	Client  string // client address, for logs
	// AddrCheck, when set, is a further check of each resolved address on behalf of whoever asked
	// for the dial (a broker's policy, which its provider applies): an address it returns an error
	// for is not dialed, and when none is left the first such error is the dial's.
	AddrCheck func(netip.Addr) error
	// Decision is the policy decision that admitted the request. The front end sets it from the
	// name-stage decision; a Dialer that checks resolved addresses replaces it with the final one.
	Decision policy.Decision
	// Pin, when valid, is the only address to connect to: the original destination of a captured
	// connection, which its front end checked is an address of Target's name. The Direct dialer
	// checks it against the policy instead of resolving; a tunnel dialer's provider resolves.
	Pin netip.Addr
}

// Dialer opens a connection to a request's target.
//
// The contract every Dialer keeps: it refuses (a KindDenied *Error) a request whose Decision is not
// an allow, and it does not decide the target's name again; a Dialer that resolves names checks only
// the addresses it resolved.
type Dialer interface {
	Dial(ctx context.Context, req *Request) (net.Conn, error)
}

// Refuse returns the refusal of a request whose decision is not an allow, or nil. Every Dialer
// calls it first.
func Refuse(req *Request) error {
	if req.Decision.Allow {
		return nil
	}
	d := req.Decision
	if d.Code == "" {
		d.Code, d.Reason = policy.CodeNoRule, "the request reached the dialer with no policy decision"
	}
	return Denied(req.Target, d)
}

// Deciding is a Dialer for callers that are not a proxy front end (a tunnel provider serving the
// broker's open requests): it makes the name-stage decision under Policy, then dials with Dialer.
type Deciding struct {
	Policy func() *policy.Policy
	Dialer Dialer
}

// Dial decides req's target by name and, when allowed, dials it.
func (d Deciding) Dial(ctx context.Context, req *Request) (net.Conn, error) {
	req.Decision = d.Policy().Decide(req.Target, nil)
	return d.Dialer.Dial(ctx, req)
}

// Kind classifies dial failures; front ends turn kinds into status codes in one place.
type Kind int

// Kinds of failure.
const (
	KindInternal    Kind = iota // a bug or resource problem in swarm-proxy itself
	KindDenied                  // the policy refused the target (403)
	KindResolve                 // the name did not resolve (502)
	KindRefused                 // the target refused or reset the connection (502)
	KindUnreachable             // no route, or another network error (502)
	KindTimeout                 // the target did not answer in time (504)
	KindNoProvider              // broker: no provider serves the session (502)
)

var kindNames = [...]string{"internal", "denied", "resolve", "refused", "unreachable", "timeout", "no_provider"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a failed dial with its kind and a reason fit for the user.
type Error struct {
	Kind     Kind
	Target   policy.Target
	Decision *policy.Decision // set for KindDenied
	Reason   string
	Provider string // the tunnel provider that refused or failed the dial; "" when none took part
	Err      error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("dial %s: %s: %v", e.Target, e.Reason, e.Err)
	}
	return fmt.Sprintf("dial %s: %s", e.Target, e.Reason)
}

func (e *Error) Unwrap() error { return e.Err }

// Denied returns the error for a target the policy refused.
func Denied(t policy.Target, d policy.Decision) *Error {
	return &Error{Kind: KindDenied, Target: t, Decision: &d, Reason: d.Reason}
}

// Classify wraps a network error from dialing t in an *Error of the right kind.
func Classify(t policy.Target, err error) *Error {
	var de *Error
	if errors.As(err, &de) {
		return de
	}
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		reason := "the name did not resolve"
		if dnsErr.IsNotFound {
			reason = "no such host"
		} else if dnsErr.IsTimeout {
			reason = "DNS lookup timed out"
		}
		return &Error{Kind: KindResolve, Target: t, Reason: reason, Err: err}
	case IsTimeout(err):
		return &Error{Kind: KindTimeout, Target: t, Reason: "the target did not answer in time", Err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Kind: KindRefused, Target: t, Reason: "connection refused by the target", Err: err}
	case errors.Is(err, syscall.ECONNRESET):
		return &Error{Kind: KindRefused, Target: t, Reason: "connection reset by the target", Err: err}
	case errors.Is(err, context.Canceled):
		return &Error{Kind: KindUnreachable, Target: t, Reason: "the client went away", Err: err}
	default:
		return &Error{Kind: KindUnreachable, Target: t, Reason: "the target is unreachable", Err: err}
	}
}

// IsTimeout reports whether err is a timeout: a deadline of a context or a connection, or a
// network error that says so.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// RootCause strips Go's wrapping ("dial tcp 1.2.3.4:80: connect: ...") down to the innermost
// error, the system's words, for reasons shown to users.
func RootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// Resolver looks up the addresses of a name.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DefaultTimeout bounds resolving and connecting when Direct.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Direct dials targets from this machine under a policy.
type Direct struct {
	// Policy returns the policy in force; it is called once per dial.
	Policy func() *policy.Policy
	// Resolver resolves names; nil means net.DefaultResolver.
	Resolver Resolver
	// DialContext connects to a checked address; nil means a net.Dialer with TCP keepalives.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds resolving plus connecting; zero means DefaultTimeout.
	Timeout time.Duration
	// Observe, when set, is told how long each successful connect took.
	Observe func(time.Duration)
	// Machine reports this machine's own addresses, refused like loopback unless an allow cidr
	// rule covers them; nil means the addresses of this machine's interfaces (hostaddr.Default).
	Machine policy.Machine
}

// Dial refuses a request its front end did not allow, resolves the target once, checks every
// address against the policy and dials the checked addresses in order until one answers.
func (d *Direct) Dial(ctx context.Context, req *Request) (net.Conn, error) {
	if err := Refuse(req); err != nil {
		return nil, err
	}
	t := req.Target
	pol := d.Policy()
	timeout := d.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	addrs := []netip.Addr{req.Pin.Unmap()}
	var err error
	if !req.Pin.IsValid() {
		if addrs, err = d.resolve(ctx, t); err != nil {
			return nil, Classify(t, err)
		}
	}
	m := d.Machine
	if m == nil {
		m = hostaddr.Default()
	}
	dec := pol.DecideOn(m, t, addrs)
	if !dec.Allow {
		return nil, Denied(t, dec)
	}
	if req.AddrCheck != nil {
		if dec.Addrs, err = checkAddrs(dec.Addrs, req.AddrCheck); err != nil {
			return nil, err
		}
	}
	req.Decision = dec
	dialFn := d.DialContext
	if dialFn == nil {
		dialFn = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	start := time.Now()
	var firstErr error
	for _, a := range dec.Addrs {
		c, err := dialFn(ctx, "tcp", netip.AddrPortFrom(a, uint16(t.Port)).String())
		if err == nil {
			if d.Observe != nil {
				d.Observe(time.Since(start))
			}
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, Classify(t, firstErr)
}

// checkAddrs keeps the addresses check accepts, or returns its first refusal when it accepts none.
func checkAddrs(addrs []netip.Addr, check func(netip.Addr) error) ([]netip.Addr, error) {
	var ok []netip.Addr
	var first error
	for _, a := range addrs {
		if err := check(a); err != nil {
			first = cmp.Or(first, err)
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		return nil, first
	}
	return ok, nil
}

func (d *Direct) resolve(ctx context.Context, t policy.Target) ([]netip.Addr, error) {
	if a, ok := t.Addr(); ok {
		return []netip.Addr{a}, nil
	}
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", t.Host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: t.Host, IsNotFound: true}
	}
	return addrs, nil
}
