package connectclient

import (
	"context"
	"errors"
	"net"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Upstream is a dial.Dialer that opens each allowed connection as a CONNECT tunnel through D. A
// worker's sidecar proxy (transparent capture, the DNS guard) with a session ticket uses it so that
// everything it lets through goes out through the broker and the session's providers; the broker's
// policy decides again, and the provider resolves the name.
type Upstream struct{ D *Dialer }

// Dial opens a tunnel to req's target through the upstream proxy. A request that was not allowed is
// refused without a connection; a refusal by the upstream proxy is a KindDenied error with its reason.
func (u Upstream) Dial(ctx context.Context, req *dial.Request) (net.Conn, error) {
	if err := dial.Refuse(req); err != nil {
		return nil, err
	}
	c, err := u.D.Dial(ctx, req.Target.String())
	if err == nil {
		return c, nil
	}
	var ce *Error
	if !errors.As(err, &ce) {
		return nil, dial.Classify(req.Target, err)
	}
	switch ce.Kind {
	case KindAuth:
		d := policy.Decision{Code: policy.Code(accesslog.ErrorAuth), Reason: "the broker refused the session ticket: " + ce.Reason, Fix: ce.Fix}
		return nil, dial.Denied(req.Target, d)
	case KindBlocked:
		d := policy.Decision{Code: policy.CodeDeniedByRule, Reason: "the broker refused: " + ce.Reason, Fix: ce.Fix}
		return nil, dial.Denied(req.Target, d)
	case KindTimeout:
		return nil, &dial.Error{Kind: dial.KindTimeout, Target: req.Target, Reason: "the broker's provider got no answer in time: " + ce.Reason, Err: err}
	case KindProxy:
		return nil, &dial.Error{Kind: dial.KindUnreachable, Target: req.Target, Reason: "the broker cannot be reached", Err: ce.Err}
	default:
		return nil, &dial.Error{Kind: dial.KindUnreachable, Target: req.Target, Reason: "the broker could not open the tunnel: " + ce.Reason}
	}
}

// DialAddr opens a tunnel to addr (HOST:PORT) through the upstream proxy, for callers that are not
// a request (the DNS guard asking its upstream resolver over TCP).
func (u Upstream) DialAddr(ctx context.Context, addr string) (net.Conn, error) {
	return u.D.Dial(ctx, addr)
}
