package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Defaults of the capture check's probe: a connection made directly, as a tool that ignores the
// proxy variables makes it, to a documentation address (TEST-NET-1, which no network routes) with
// a name that cannot exist, so that only swarm-proxy's transparent listener answers it, and with a
// refusal that carries swarm-proxy's headers.
const (
	DefaultCaptureProbe = "192.0.2.1:80"
	captureProbeHost    = "capture-probe.swarm-proxy.invalid"
	captureTimeout      = 3 * time.Second
	// smallSegment: a captured connection with segments below this size was not given the
	// capture route (loopback's MTU), whose segments are tens of KiB.
	smallSegment = 16 << 10
)

// captureFix says how to capture tools that ignore the variables.
const captureFix = "run the proxy in the agent's network namespace with --transparent-listen (and --dns-listen) and apply `swarm-proxy firewall --transparent` there (docs/agents.md)"

// checkCapture tells whether a tool that ignores the proxy variables is captured by swarm-proxy's
// transparent listener, refused by a firewall, or let out.
func checkCapture(ctx context.Context, c Config, add func(Result)) {
	const check = "capture"
	probe := c.CaptureProbe
	if probe == "" {
		probe = DefaultCaptureProbe
	}
	dial := c.DialDirect
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithTimeout(ctx, min(c.Timeout, captureTimeout))
	defer cancel()
	conn, err := dial(ctx, "tcp", probe)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET):
		add(Result{Warn, check, fmt.Sprintf("not captured: a direct connection (to %s, ignoring the variables) is refused at once, so a tool that ignores the variables fails instead of getting out", probe), captureFix})
		return
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		add(Result{Warn, check, fmt.Sprintf("not captured: a direct connection (to %s, ignoring the variables) got no answer, so a tool that ignores the variables hangs until its own timeout", probe), captureFix})
		return
	case err != nil:
		add(Result{Warn, check, fmt.Sprintf("not captured: a direct connection (to %s, ignoring the variables) fails: %v", probe, unwrapOp(err)), captureFix})
		return
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: swarm-proxy-doctor\r\nConnection: close\r\n\r\n", captureProbeHost)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		add(Result{Fail, check, fmt.Sprintf("not captured: a direct connection to %s was accepted by something that is not swarm-proxy (%v): tools that ignore the variables may get out", probe, unwrapOp(err)), captureFix})
		return
	}
	resp.Body.Close()
	if d := resp.Header.Get(HeaderDecision); d != "" {
		d, _, _ = strings.Cut(d, "; reason=")
		msg := fmt.Sprintf("captured: a tool that ignores the proxy variables is redirected to swarm-proxy's transparent listener, decided by the same policy and logged with \"transparent\": true (the probe got %d, %s)", resp.StatusCode, d)
		if seg := segmentSize(conn); seg > 0 && seg < smallSegment {
			msg += fmt.Sprintf("; its segments are %d bytes, sized by the route it dialed: `swarm-proxy firewall --transparent --capture-route` makes captured connections as fast as explicit ones", seg)
		}
		add(Result{OK, check, msg, ""})
		return
	}
	add(Result{Fail, check, fmt.Sprintf("not captured: a direct connection to %s was answered (%s) without swarm-proxy's headers: tools that ignore the variables get out", probe, resp.Status), captureFix})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
