package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/connectclient"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
)

func newForwardCmd() *cobra.Command {
	var (
		f               tunnelFlags
		shutdownTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "forward (--ticket FILE | --proxy URL) LOCAL_ADDR=HOST:PORT [...]",
		Short: "Listen on local ports and forward each connection to HOST:PORT through a broker or an HTTP CONNECT proxy",
		Long: `Listen on each LOCAL_ADDR and forward every accepted connection to its HOST:PORT through a
swarm-proxy broker (with a session ticket) or any HTTP CONNECT proxy, under that proxy's policy and
access log. LOCAL_ADDR is HOST:PORT or just PORT (127.0.0.1 is then used); port 0 picks a free port.
A line "forward listening local=ADDR target=HOST:PORT" is printed on stderr for each listener.

  swarm-proxy forward --proxy http://127.0.0.1:8080 127.0.0.1:2222=10.0.0.5:22 5433=db.internal:5432
  ssh -p 2222 user@127.0.0.1

On SIGTERM or SIGINT the listeners close and open connections get --shutdown-timeout to finish.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("%s: want at least one LOCAL_ADDR=HOST:PORT (see %s --help)", cmd.CommandPath(), cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var specs []forwardSpec
			var errs []error
			for _, a := range args {
				s, err := parseForward(a)
				if err != nil {
					errs = append(errs, err)
				}
				specs = append(specs, s)
			}
			d, err := f.dialer()
			errs = append(errs, err)
			if shutdownTimeout < 0 {
				errs = append(errs, errors.New("--shutdown-timeout must not be negative"))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			return runForward(cmd.Context(), d, specs, shutdownTimeout, logger)
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().DurationVar(&shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM/SIGINT, how long open connections may finish")
	return cmd
}

// forwardSpec is one LOCAL_ADDR=HOST:PORT argument.
type forwardSpec struct {
	local, target string
}

func parseForward(arg string) (forwardSpec, error) {
	local, target, ok := strings.Cut(arg, "=")
	if !ok {
		return forwardSpec{}, fmt.Errorf("forward %q: want LOCAL_ADDR=HOST:PORT, e.g. 127.0.0.1:2222=10.0.0.5:22", arg)
	}
	if _, err := strconv.ParseUint(local, 10, 16); err == nil {
		local = net.JoinHostPort("127.0.0.1", local)
	}
	if _, _, err := net.SplitHostPort(local); err != nil {
		return forwardSpec{}, fmt.Errorf("forward %q: local address %q: want HOST:PORT or PORT", arg, local)
	}
	t, err := parseTarget(target)
	if err != nil {
		return forwardSpec{}, fmt.Errorf("forward %q: %w", arg, err)
	}
	return forwardSpec{local: local, target: t}, nil
}

// forwarder runs the listeners of one forward command and tracks their connections.
type forwarder struct {
	dialer *connectclient.Dialer
	logger *slog.Logger
	ctx    context.Context // cancelled when the shutdown timeout runs out
	conns  serve.Tracker
}

func runForward(ctx context.Context, d *connectclient.Dialer, specs []forwardSpec, shutdownTimeout time.Duration, logger *slog.Logger) error {
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, s := range specs {
		ln, err := net.Listen("tcp", s.local)
		if err != nil {
			closeAll()
			return fmt.Errorf("forward listen: %w", err)
		}
		lns = append(lns, serve.Listen(ln, "forward "+s.local, nil, logger))
	}
	hardCtx, hardStop := context.WithCancel(context.Background())
	defer hardStop()
	fw := &forwarder{dialer: d, logger: logger, ctx: hardCtx}
	var accepting sync.WaitGroup
	acceptErr := make(chan error, len(lns))
	for i, ln := range lns {
		logger.Info("forward listening", "local", ln.Addr().String(), "target", specs[i].target, "via", d.Proxy)
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			if err := fw.accept(ln, specs[i].target); err != nil {
				acceptErr <- err
			}
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-acceptErr:
	}
	closeAll()
	accepting.Wait()
	logger.Info("shutting down", "timeout", shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	context.AfterFunc(sctx, hardStop) // when time runs out, dials in progress end too
	fw.conns.Refuse()
	if err := fw.conns.Wait(sctx); err != nil {
		logger.Warn("shutdown timeout reached: open connections were aborted")
	}
	hardStop()
	logger.Info("stopped")
	return runErr
}

// accept serves ln until it is closed; it returns an error only when accepting fails for another
// reason (temporary errors are retried by serve.Listen).
func (fw *forwarder) accept(ln net.Listener, target string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("forward accept on %s: %w", ln.Addr(), err)
		}
		if !fw.conns.Go(func() { relay.Abort(c) }, func(*serve.Item) { fw.serve(c, target) }) {
			c.Close()
		}
	}
}

// serve opens the tunnel for one accepted connection and relays until both sides are done.
func (fw *forwarder) serve(c net.Conn, target string) {
	start := time.Now()
	up, err := fw.dialer.Dial(fw.ctx, target)
	if err != nil {
		fw.logger.Warn("forward failed", "local", c.LocalAddr().String(), "client", c.RemoteAddr().String(), "err", err)
		relay.Abort(c)
		return
	}
	res := relay.Pipe(c, up, 0)
	attrs := []any{"local", c.LocalAddr().String(), "client", c.RemoteAddr().String(), "target", target,
		"bytes_out", res.AToB, "bytes_in", res.BToA, "duration", time.Since(start).Round(time.Millisecond)}
	if res.Err != nil {
		fw.logger.Warn("forward ended with an error", append(attrs, "err", res.Err)...)
		return
	}
	fw.logger.Info("forward closed", attrs...)
}
