package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
	"github.com/swarm-proxy/swarm-proxy/internal/tunnel"
)

// ticketAuth authenticates workers by their session ticket: the proxy user is the session id and
// the password the token.
type ticketAuth struct{ auth *ticket.Authority }

func (a ticketAuth) Authenticate(user, password string) (string, error) {
	if _, err := a.auth.Verify(user, password); err != nil {
		return "", err
	}
	return user, nil
}

func newBrokerCmd() *cobra.Command {
	var (
		f                                           frontendFlags
		providerListen, secretFile, tlsCert, tlsKey string
		keepalive, openTimeout                      time.Duration
		maxStreams                                  int
	)
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the proxy for workers without egress; providers dial in and carry their traffic",
		Long: `Run the broker: the proxy front end (HTTP forward and CONNECT, policy, access log) for workers
that have no egress of their own. Workers authenticate with Proxy-Authorization: Basic
session_id:token (a ticket from "swarm-proxy ticket"); their requests go out through a provider
connected for that session ("swarm-proxy provider"), over one multiplexed connection per provider.
The broker never dials a target itself; its policy applies before anything is sent to a provider.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if err := f.validate(); err != nil {
				errs = append(errs, err)
			}
			if providerListen == "" {
				errs = append(errs, errors.New("--provider-listen is required"))
			}
			if (tlsCert == "") != (tlsKey == "") {
				errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
			}
			cfg := tunnel.Config{KeepAlive: keepalive, OpenTimeout: openTimeout, MaxStreams: maxStreams}
			if err := cfg.Validate(); err != nil {
				errs = append(errs, err)
			}
			secret, err := ticket.LoadSecret(secretFile)
			if err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			auth, err := ticket.New(secret)
			if err != nil {
				return err
			}
			var tlsCfg *tls.Config
			if tlsCert != "" {
				cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					return fmt.Errorf("load --tls-cert/--tls-key: %w", err)
				}
				tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			}
			broker := &tunnel.Broker{Auth: auth, TLS: tlsCfg, Config: cfg}
			defer broker.Close()
			return runFrontend(cmd.Context(), cmd, &f, func(rt *runtime) (dial.Dialer, proxy.Authenticator, error) {
				broker.Logger = rt.logger
				broker.Metrics = tunnel.NewMetrics(rt.registry)
				ln, err := net.Listen("tcp", providerListen)
				if err != nil {
					return nil, nil, fmt.Errorf("provider listen: %w", err)
				}
				go func() {
					if err := broker.Serve(ln); err != nil && !errors.Is(err, tunnel.ErrClosed) {
						rt.logger.Error("provider listener failed", "err", err)
					}
				}()
				rt.logger.Info("broker listening for providers", "provider_listen", ln.Addr().String(), "tls", tlsCfg != nil)
				rt.onShutdown = func(context.Context) { broker.Close() }
				return broker, ticketAuth{auth}, nil
			})
		},
	}
	f.register(cmd.Flags())
	fs := cmd.Flags()
	fs.StringVar(&providerListen, "provider-listen", "", "address where providers connect (required)")
	fs.StringVar(&secretFile, "secret-file", "", "file holding the ticket secret, at least 32 bytes (default: $"+ticket.EnvSecret+")")
	fs.StringVar(&tlsCert, "tls-cert", "", "certificate for the provider listener (PEM); with --tls-key, providers connect over TLS")
	fs.StringVar(&tlsKey, "tls-key", "", "private key for --tls-cert (PEM)")
	fs.DurationVar(&keepalive, "keepalive", tunnel.DefaultKeepAlive, "a silent provider connection is declared dead after this long")
	fs.DurationVar(&openTimeout, "open-timeout", tunnel.DefaultOpenTimeout, "how long a provider may take to connect to a target (504 after)")
	fs.IntVar(&maxStreams, "max-streams", tunnel.DefaultMaxStreams, "concurrent streams per session")
	// Targets are dialed by providers, under their own --dial-timeout; the broker's bound is --open-timeout.
	fs.MarkHidden("dial-timeout")
	return cmd
}
