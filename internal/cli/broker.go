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
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
	"github.com/swarm-proxy/swarm-proxy/internal/tunnel"
)

// ticketAuth authenticates workers by their session ticket: the proxy user is the session id and
// the password the token.
type ticketAuth struct{ auth *ticket.Authority }

func (a ticketAuth) Authenticate(user, password string) (session, credential string, err error) {
	if ticket.LooksLikeToken(user) {
		// Two tokens, or the token first: neither may be repeated in the answer or the log.
		return "", "", errors.New("the proxy user name is a token: send the session id as the user name and the token as the password")
	}
	if _, err := a.auth.Verify(user, password, ticket.RoleWorker); err != nil {
		return "", "", err
	}
	return user, ticket.TokenID(password), nil
}

func newBrokerCmd() *cobra.Command {
	var (
		f                                                        frontendFlags
		providerListen, secretFile, tlsCert, tlsKey, revokedFile string
		keepalive, openTimeout, handshakeTimeout                 time.Duration
		maxStreams, maxProviders                                 int
		insecurePlaintext                                        bool
	)
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the proxy for workers without egress; providers dial in and carry their traffic",
		Long: `Run the broker: the proxy front end (HTTP forward and CONNECT, policy, access log) for workers
that have no egress of their own. Workers authenticate with Proxy-Authorization: Basic
session_id:token (a ticket from "swarm-proxy ticket"); their requests go out through a provider
connected for that session ("swarm-proxy provider"), over one multiplexed connection per provider.
The broker never dials a target itself; its policy applies before anything is sent to a provider.

Providers connect over TLS (--tls-cert and --tls-key; the broker prints the certificate's
fingerprint for providers to pin with --broker-fingerprint); plaintext needs --insecure-plaintext
on both sides. Tickets have roles: workers need worker tickets, providers provider tickets.`,
		Example: `  # A self-signed certificate for the provider port, then the broker:
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj /CN=broker -addext subjectAltName=IP:127.0.0.1 -keyout broker.key -out broker.crt
  swarm-proxy broker --listen 127.0.0.1:8080 --provider-listen 127.0.0.1:7000 \
    --secret-file secret --tls-cert broker.crt --tls-key broker.key

  # With a policy, metrics, and a revocation list reloaded on change:
  swarm-proxy broker --listen 0.0.0.0:8080 --provider-listen 0.0.0.0:7000 --secret-file secret \
    --tls-cert broker.crt --tls-key broker.key --policy policy.yaml --admin-listen 127.0.0.1:9090 \
    --revoked revoked.txt`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if err := f.validate(); err != nil {
				errs = append(errs, err)
			}
			if providerListen == "" {
				errs = append(errs, errors.New("--provider-listen is required"))
			} else if addr, err := listenAddr("provider-listen", providerListen); err != nil {
				errs = append(errs, err)
			} else {
				providerListen = addr
			}
			switch {
			case (tlsCert == "") != (tlsKey == ""):
				errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
			case tlsCert == "" && !insecurePlaintext:
				errs = append(errs, errors.New("providers connect over TLS: give --tls-cert and --tls-key (a self-signed certificate will do; providers pin it with --broker-fingerprint), or --insecure-plaintext on a network you trust"))
			case tlsCert != "" && insecurePlaintext:
				errs = append(errs, errors.New("give --tls-cert/--tls-key or --insecure-plaintext, not both"))
			}
			if maxProviders < 1 {
				errs = append(errs, fmt.Errorf("--max-providers-per-session %d: want at least 1", maxProviders))
			}
			cfg := tunnel.Config{KeepAlive: keepalive, OpenTimeout: openTimeout, MaxStreams: maxStreams,
				HandshakeTimeout: handshakeTimeout, MaxProvidersPerSession: maxProviders}
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
			revoked := &ticket.Revocations{}
			if revokedFile != "" {
				if err := revoked.Load(revokedFile); err != nil {
					return err
				}
				auth.Revoked = revoked.Revoked
			}
			var tlsCfg *tls.Config
			var fingerprint string
			if tlsCert != "" {
				cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					return fmt.Errorf("load --tls-cert/--tls-key: %w", err)
				}
				tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
				fingerprint = tunnel.Fingerprint(cert.Certificate[0])
			}
			broker := &tunnel.Broker{Auth: auth, TLS: tlsCfg, Config: cfg}
			defer broker.Close()
			return runFrontend(cmd.Context(), cmd, &f, func(rt *runtime) (dial.Dialer, proxy.Authenticator, error) {
				broker.Logger = rt.logger
				broker.Policy = rt.policy.Load
				broker.Metrics = tunnel.NewMetrics(rt.registry)
				ln, err := net.Listen("tcp", providerListen)
				if err != nil {
					return nil, nil, fmt.Errorf("provider listen: %w", err)
				}
				go func() {
					// Temporary accept errors are retried in serve.Listen; one that is not fails /readyz.
					if err := broker.Serve(serve.Listen(ln, "provider", rt.health, rt.logger)); err != nil && !errors.Is(err, tunnel.ErrClosed) {
						rt.logger.Error("provider listener failed", "err", err)
					}
				}()
				if tlsCfg != nil {
					rt.logger.Info("broker listening for providers", "provider_listen", ln.Addr().String(), "tls", true, "fingerprint", fingerprint)
				} else {
					rt.logger.Info("broker listening for providers", "provider_listen", ln.Addr().String(), "tls", false)
					rt.logger.Warn("providers connect in plaintext (--insecure-plaintext): nothing authenticates this broker to them, and whoever can see or change the traffic between them can read and forge what workers send")
				}
				if revokedFile != "" {
					rt.logger.Info("revocation list in force", "file", revokedFile, "entries", revoked.Len())
					rt.onServer = func(srv *proxy.Server) {
						go revoked.Watch(cmd.Context(), revokedFile, 250*time.Millisecond, func() {
							// Workers' open tunnels first, so that their records say why they ended
							// rather than that a provider left.
							tunnels := srv.EndRevoked(revoked.Revoked)
							n := broker.Revoke(revoked.Revoked)
							rt.logger.Info("revocation list reloaded", "file", revokedFile, "entries", revoked.Len(), "providers_disconnected", n, "worker_tunnels_ended", tunnels)
						}, func(err error) {
							rt.logger.Error("revocation list not reloaded; the previous one stays in force", "err", err)
						})
					}
				}
				rt.onShutdown = func(context.Context) { broker.Close() }
				return broker, ticketAuth{auth}, nil
			})
		},
	}
	f.register(cmd.Flags())
	fs := cmd.Flags()
	fs.StringVar(&providerListen, "provider-listen", "", "address where providers connect (required)")
	fs.StringVar(&secretFile, "secret-file", "", "file holding the ticket secret, at least 32 bytes (default: $"+ticket.EnvSecret+")")
	fs.StringVar(&tlsCert, "tls-cert", "", "certificate for the provider listener (PEM), with --tls-key; its fingerprint is printed at startup")
	fs.StringVar(&tlsKey, "tls-key", "", "private key for --tls-cert (PEM)")
	fs.BoolVar(&insecurePlaintext, "insecure-plaintext", false, "let providers connect without TLS (they need --insecure-plaintext too); only on a network you trust")
	fs.IntVar(&maxProviders, "max-providers-per-session", tunnel.DefaultMaxProvidersPerSession, "providers one session may have connected at once")
	fs.DurationVar(&handshakeTimeout, "handshake-timeout", tunnel.DefaultHandshakeTimeout, "how long a provider connection may take to log in (TLS included)")
	fs.StringVar(&revokedFile, "revoked", "", "revocation list: session ids or token ids, one a line; reloaded when it changes")
	fs.DurationVar(&keepalive, "keepalive", tunnel.DefaultKeepAlive, "a silent provider connection is declared dead after this long")
	fs.DurationVar(&openTimeout, "open-timeout", tunnel.DefaultOpenTimeout, "how long a provider may take to connect to a target (504 after)")
	fs.IntVar(&maxStreams, "max-streams", tunnel.DefaultMaxStreams, "concurrent streams per session")
	// Targets are dialed by providers, under their own --dial-timeout; the broker's bound is --open-timeout.
	fs.MarkHidden("dial-timeout")
	return cmd
}
