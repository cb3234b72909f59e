package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/spf13/pflag"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/connectclient"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/dnsguard"
	"github.com/swarm-proxy/swarm-proxy/internal/hostaddr"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
	"github.com/swarm-proxy/swarm-proxy/internal/transparent"
)

// resolvConf is where the DNS guard finds its upstream resolvers when --dns-upstream is not given.
var resolvConf = "/etc/resolv.conf"

// captureFlags are the proxy's transparent capture and DNS guard flags.
type captureFlags struct {
	transparentListen string
	dnsListen         string
	dnsUpstream       []string
	ticket, broker    string
	// exchange, set in broker mode, asks the DNS upstream through the broker.
	exchange dnsguard.Exchanger
}

func (c *captureFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.transparentListen, "transparent-listen", "", "address for connections the firewall redirects (swarm-proxy firewall --transparent): transparent capture, same policy and log (empty disables)")
	fs.StringVar(&c.dnsListen, "dns-listen", "", "address of the DNS guard, UDP and TCP: answers the agent's queries under the policy (empty disables)")
	fs.StringSliceVar(&c.dnsUpstream, "dns-upstream", nil, "resolvers the DNS guard asks, HOST:PORT (default: the nameservers of "+resolvConf+")")
	fs.StringVar(&c.ticket, "ticket", "", "broker mode for a worker's sidecar: send every allowed connection (and the DNS guard's queries, over TCP) through the broker with this session ticket, so that they go out through the session's providers")
	fs.StringVar(&c.broker, "broker", "", "with --ticket: the broker's proxy address HOST:PORT (default: broker_addr from the ticket)")
}

// dialer returns the proxy's dialer: direct, or through the broker of --ticket.
func (c *captureFlags) dialer(direct dial.Dialer) (dial.Dialer, error) {
	if c.ticket == "" {
		return direct, nil
	}
	cc, err := connectclient.FromTicket(c.ticket, c.broker)
	if err != nil {
		return nil, err
	}
	up := connectclient.Upstream{D: cc}
	c.exchange = dnsguard.TCPExchange(up.DialAddr)
	return up, nil
}

func (c *captureFlags) validate() []error {
	var errs []error
	if len(c.dnsUpstream) > 0 && c.dnsListen == "" {
		errs = append(errs, errors.New("--dns-upstream goes with --dns-listen"))
	}
	if c.broker != "" && c.ticket == "" {
		errs = append(errs, errors.New("--broker goes with --ticket"))
	}
	if c.ticket != "" && c.dnsListen != "" && len(c.dnsUpstream) == 0 {
		errs = append(errs, errors.New("--ticket with --dns-listen needs --dns-upstream: a resolver the session's providers reach (the guard asks it over TCP through the broker)"))
	}
	for _, u := range c.dnsUpstream {
		if _, _, err := net.SplitHostPort(u); err != nil {
			errs = append(errs, fmt.Errorf("--dns-upstream %q: want HOST:PORT", u))
		}
	}
	return errs
}

// capture is the running transparent listener and DNS guard.
type capture struct {
	tsrv      *transparent.Server
	tln       net.Listener
	guard     *dnsguard.Guard
	guardUDP  net.PacketConn
	guardTCP  net.Listener
	stopGuard context.CancelFunc
	guardDone chan error
}

// startCapture opens the listeners of c; nothing is served until serve.
func startCapture(c *captureFlags, srv *proxy.Server, pol *policy.Holder, logw *accesslog.Writer, logger *slog.Logger) (*capture, error) {
	cp := &capture{}
	cache := dnsguard.NewCache(0)
	cache.Local = hostaddr.Default().Owns
	if c.dnsListen != "" {
		upstreams := c.dnsUpstream
		if len(upstreams) == 0 {
			var err error
			if upstreams, err = dnsguard.UpstreamsFromResolvConf(resolvConf); err != nil {
				return nil, err
			}
		}
		if slices.Contains(upstreams, c.dnsListen) {
			return nil, fmt.Errorf("--dns-upstream %s is the guard's own --dns-listen: it would ask itself", c.dnsListen)
		}
		var err error
		if cp.guardUDP, err = net.ListenPacket("udp", c.dnsListen); err != nil {
			return nil, fmt.Errorf("dns listen: %w", err)
		}
		if cp.guardTCP, err = net.Listen("tcp", cp.guardUDP.LocalAddr().String()); err != nil {
			cp.guardUDP.Close()
			return nil, fmt.Errorf("dns listen: %w", err)
		}
		cp.guard = &dnsguard.Guard{Policy: pol.Load, Upstreams: upstreams, Log: logw, Cache: cache, Exchange: c.exchange}
	}
	if c.transparentListen != "" {
		ln, err := net.Listen("tcp", c.transparentListen)
		if err != nil {
			cp.close()
			return nil, fmt.Errorf("transparent listen: %w", err)
		}
		cp.tln = ln
		cp.tsrv = &transparent.Server{Proxy: srv, Verifier: &transparent.Verifier{Answers: cache}, Logger: logger}
	}
	return cp, nil
}

func (cp *capture) close() {
	if cp.guardUDP != nil {
		cp.guardUDP.Close()
	}
	if cp.guardTCP != nil {
		cp.guardTCP.Close()
	}
	if cp.tln != nil {
		cp.tln.Close()
	}
}

// attrs are the listening addresses for the startup log line.
func (cp *capture) attrs() []any {
	var a []any
	if cp.tln != nil {
		a = append(a, "transparent", cp.tln.Addr().String())
	}
	if cp.guard != nil {
		a = append(a, "dns", cp.guardUDP.LocalAddr().String(), "dns_upstream", cp.guard.Upstreams)
	}
	return a
}

// serve starts serving; a listener that fails sends its error to serveErr.
func (cp *capture) serve(serveErr chan<- error) {
	if cp.tsrv != nil {
		go func() {
			if err := cp.tsrv.Serve(cp.tln); !errors.Is(err, transparent.ErrServerClosed) {
				serveErr <- err
			}
		}()
	}
	if cp.guard != nil {
		var ctx context.Context
		ctx, cp.stopGuard = context.WithCancel(context.Background())
		cp.guardDone = make(chan error, 1)
		go func() {
			err := cp.guard.Serve(ctx, cp.guardUDP, cp.guardTCP)
			cp.guardDone <- err
			if err != nil {
				serveErr <- err
			}
		}()
	}
}

// shutdown stops accepting and waits, until ctx ends, for what is not yet the proxy's.
func (cp *capture) shutdown(ctx context.Context) {
	if cp.tsrv != nil {
		cp.tsrv.Shutdown(ctx)
	}
	if cp.guard != nil {
		cp.stopGuard()
		select {
		case <-cp.guardDone:
		case <-ctx.Done():
		}
	}
}
