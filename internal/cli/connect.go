package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/swarm-proxy/swarm-proxy/internal/connectclient"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// tunnelFlags choose how connect and forward reach the target: a broker with a ticket, or any
// HTTP CONNECT proxy.
type tunnelFlags struct {
	ticket  string
	broker  string
	proxy   string
	timeout time.Duration
}

func (f *tunnelFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.ticket, "ticket", "", "broker mode: ticket file from \"swarm-proxy ticket --json\"")
	fs.StringVar(&f.broker, "broker", "", "with --ticket: the broker's proxy address HOST:PORT (default: broker_addr from the ticket)")
	fs.StringVar(&f.proxy, "proxy", "", "an HTTP CONNECT proxy: HOST:PORT or http://[user:pass@]HOST:PORT (e.g. swarm-proxy proxy)")
	fs.DurationVar(&f.timeout, "connect-timeout", connectclient.DefaultTimeout, "bound on reaching the proxy and getting its answer")
}

func (f *tunnelFlags) dialer() (*connectclient.Dialer, error) {
	var d *connectclient.Dialer
	var err error
	switch {
	case f.ticket != "" && f.proxy != "":
		return nil, errors.New("give either --ticket or --proxy, not both")
	case f.ticket != "":
		d, err = connectclient.FromTicket(f.ticket, f.broker)
	case f.proxy != "":
		if f.broker != "" {
			return nil, errors.New("--broker goes with --ticket; with --proxy put the address in the URL")
		}
		d, err = connectclient.FromURL(proxyFlagURL(f.proxy))
	default:
		return nil, errors.New("say how to reach the target: --ticket FILE (broker) or --proxy HOST:PORT")
	}
	if err != nil {
		return nil, err
	}
	if f.timeout <= 0 {
		return nil, errors.New("--connect-timeout must be positive")
	}
	d.Timeout = f.timeout
	return d, nil
}

// parseTarget checks a HOST:PORT argument and returns it normalised.
func parseTarget(s string) (string, error) {
	t, err := policy.ParseTarget(s, 0)
	if err != nil {
		return "", fmt.Errorf("target %q: want HOST:PORT: %w", s, err)
	}
	return t.String(), nil
}

func newConnectCmd() *cobra.Command {
	var f tunnelFlags
	cmd := &cobra.Command{
		Use:   "connect (--ticket FILE | --proxy URL) HOST:PORT",
		Short: "Bridge stdin/stdout to HOST:PORT through a broker or an HTTP CONNECT proxy (ssh ProxyCommand)",
		Long: `Open a tunnel to HOST:PORT through a swarm-proxy broker (with a session ticket) or any HTTP
CONNECT proxy, and copy stdin to it and its answer to stdout. Made for ssh:

  ssh -o ProxyCommand='swarm-proxy connect --ticket t.json %h:%p' user@host
  ssh -o ProxyCommand='swarm-proxy connect --proxy http://127.0.0.1:8080 %h:%p' user@host

When stdin ends, the tunnel's write side is closed and the answer is still copied to the end.
A refusal (authentication, policy, unreachable target) is printed as one line on stderr and the
exit status is non-zero.`,
		Args: exactArgs(1, "HOST:PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			target, err := parseTarget(args[0])
			if err != nil {
				return err
			}
			d, err := f.dialer()
			if err != nil {
				return err
			}
			conn, err := d.Dial(cmd.Context(), target)
			if err != nil {
				return err
			}
			if err := bridge(cmd.Context(), conn, cmd.InOrStdin(), cmd.OutOrStdout()); err != nil {
				return fmt.Errorf("connect %s: %w", target, err)
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// bridge copies in to conn and conn to out. The end of in half-closes conn; the end of conn's
// answer ends the bridge. conn is closed on return.
func bridge(ctx context.Context, conn net.Conn, in io.Reader, out io.Writer) error {
	upDone := make(chan error, 1)
	downDone := make(chan error, 1)
	go func() { upDone <- copyStdin(conn, in) }()
	go func() { downDone <- copyStdout(out, conn) }()
	// Close the tunnel first (it unblocks a stdin copy stuck writing to it), then stdin.
	defer func() { unblock(in, upDone) }()
	defer conn.Close()
	for {
		select {
		case err := <-downDone:
			return err
		case err := <-upDone:
			if err != nil {
				return err
			}
			upDone = nil // stdin is done; wait for the rest of the answer
		case <-ctx.Done():
			return nil
		}
	}
}

// copyStdin sends in to the tunnel, then closes the tunnel's write side so the server sees EOF.
func copyStdin(conn net.Conn, in io.Reader) error {
	if _, err := io.Copy(conn, in); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return fmt.Errorf("half-close: %w", err)
		}
	}
	return nil
}

// copyStdout writes the tunnel's answer to out until the server ends it.
func copyStdout(out io.Writer, conn net.Conn) error {
	if _, err := io.Copy(out, conn); err != nil {
		return fmt.Errorf("tunnel broken: %w", err)
	}
	return nil
}

// unblock stops a stdin copy still running when the bridge ends: pipes and sockets support read
// deadlines; for other inputs the goroutine ends with the process.
func unblock(in io.Reader, upDone chan error) {
	if upDone == nil {
		return
	}
	if d, ok := in.(interface{ SetReadDeadline(time.Time) error }); ok && d.SetReadDeadline(time.Unix(1, 0)) == nil {
		<-upDone
	}
}
