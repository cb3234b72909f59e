package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
)

// Headers set on responses the proxy itself writes.
const (
	HeaderDecision  = "X-Swarm-Proxy-Decision"
	HeaderError     = "X-Swarm-Proxy-Error"
	HeaderRequestID = "X-Swarm-Proxy-Request-Id"
)

// ownHeaders are the headers only swarm-proxy may set: they are removed from targets' responses.
var ownHeaders = []string{HeaderDecision, HeaderError, HeaderRequestID}

// Failure is why a request got no upstream, in a form every front end can report: an HTTP status,
// a machine-readable kind, a human reason and what to change.
type Failure struct {
	Status   int
	Kind     string    // e.g. no_rule_matched, private_address, client_not_allowed, timeout
	DialKind dial.Kind // for front ends with their own reply codes (SOCKS5)
	Denied   bool      // refused by policy, client check or authentication
	Rule     string    // the deciding rule, for policy refusals
	Provider string    // broker: the provider that refused or failed the dial
	Reason   string
	Fix      string
}

// FailureOf turns an error from Server.Dial into a Failure. This is the one place where dial
// failures become statuses.
func FailureOf(err error) *Failure {
	var de *dial.Error
	if !errors.As(err, &de) {
		return &Failure{Status: http.StatusBadGateway, Kind: accesslog.ErrorInternal, Reason: err.Error()}
	}
	f := &Failure{DialKind: de.Kind, Kind: de.Kind.String(), Reason: de.Reason, Provider: de.Provider}
	switch de.Kind {
	case dial.KindDenied:
		f.Status, f.Denied = http.StatusForbidden, true
		if de.Decision != nil {
			f.Kind, f.Rule, f.Fix = string(de.Decision.Code), de.Decision.RuleID(), de.Decision.Fix
		}
	case dial.KindTimeout:
		f.Status = http.StatusGatewayTimeout
	default:
		f.Status = http.StatusBadGateway
	}
	if de.Err != nil && de.Kind != dial.KindDenied {
		f.Reason = fmt.Sprintf("%s (%v)", de.Reason, dial.RootCause(de.Err))
	}
	return f
}

// ClientNotAllowed is the refusal of a client outside --allow-clients.
func ClientNotAllowed(client string) *Failure {
	return &Failure{Status: http.StatusForbidden, Kind: accesslog.ErrorClientNotAllowed, Denied: true,
		Reason: fmt.Sprintf("client %s is not in --allow-clients", client),
		Fix:    "start the proxy with --allow-clients including this client's address"}
}

// AuthRequired is the refusal of missing or wrong credentials; fix says how this front end's
// clients send them.
func AuthRequired(err error, fix string) *Failure {
	return &Failure{Status: http.StatusProxyAuthRequired, Kind: accesslog.ErrorAuth, Denied: true, Reason: err.Error(), Fix: fix}
}

// BadRequest is the refusal of a malformed request.
func BadRequest(reason string) *Failure {
	return &Failure{Status: http.StatusBadRequest, Kind: accesslog.ErrorBadRequest, Reason: reason}
}

// ShuttingDown is the refusal of a request that arrives once shutdown has begun.
func ShuttingDown() *Failure {
	return &Failure{Status: http.StatusServiceUnavailable, Kind: accesslog.ErrorShuttingDown, Reason: "the proxy is shutting down"}
}

// ClientClosed is the outcome of a request whose client left before it was answered.
func ClientClosed(reason string) *Failure {
	return &Failure{Status: 499, Kind: accesslog.ErrorClientClosed, Reason: reason}
}

// writeFailure answers an HTTP client with f: the status, the decision or error header (curl hides
// CONNECT response bodies, so the header carries the reason too) and a short plain-text body.
func (s *Server) writeFailure(w http.ResponseWriter, r *http.Request, req *Request, f *Failure) {
	if r.Body != nil && r.ContentLength != 0 {
		// Read a bounded part of the body, for a bounded time, so the client sees this response
		// instead of a reset, and a client that stalls cannot hold the connection.
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Now().Add(min(discardTimeout, orDefault(s.IdleTimeout, DefaultIdleTimeout))))
		if _, err := io.CopyN(io.Discard, r.Body, discardLimit); err == io.EOF {
			rc.SetReadDeadline(time.Time{})
		}
		// Otherwise the deadline stays: the server's own attempt to drain the rest before it answers
		// ends at once, and it closes the connection after the response.
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set(HeaderRequestID, req.ID)
	if f.Denied {
		h.Set(HeaderDecision, headerValue("deny", f))
	} else {
		h.Set(HeaderError, headerValue(f.Kind, f))
	}
	if f.Status == http.StatusBadRequest && !f.Denied || f.Status == http.StatusProxyAuthRequired {
		// A malformed request may have left the connection out of step; a request refused for its
		// path (ambiguous_path) was read whole, and the connection stays usable.
		h.Set("Connection", "close")
	}
	if f.Status == http.StatusProxyAuthRequired {
		h.Set("Proxy-Authenticate", `Basic realm="swarm-proxy"`)
	}
	w.WriteHeader(f.Status)
	io.WriteString(w, f.Body(req))
}

func headerValue(first string, f *Failure) string {
	v := first + "; code=" + f.Kind
	if f.Rule != "" {
		v += "; rule=" + f.Rule
	}
	return v + "; reason=" + strconv.Quote(f.Reason)
}

// Body is the plain-text explanation shown to the user.
func (f *Failure) Body(req *Request) string {
	var b strings.Builder
	what := "could not reach " + req.Target.String()
	switch {
	case f.Status == http.StatusBadRequest && req.Target.Host == "":
		what = "rejected a malformed request"
	case f.Status == http.StatusBadRequest:
		what = "rejected a malformed request for " + req.Target.String()
	case req.Target.Host == "":
		what = "refused the request"
	case f.Denied:
		what = "blocked " + req.Target.String()
	}
	fmt.Fprintf(&b, "swarm-proxy %s\nreason: %s\n", what, f.Reason)
	if f.Fix != "" {
		fmt.Fprintf(&b, "fix: %s\n", f.Fix)
	}
	fmt.Fprintf(&b, "request id: %s\n", req.ID)
	return b.String()
}
