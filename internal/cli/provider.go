package cli

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
	"github.com/swarm-proxy/swarm-proxy/internal/tunnel"
)

func newProviderCmd() *cobra.Command {
	var (
		broker, ticketFile, session, token, caFile, allowTargets, policyFile, logLevel, pin string
		useTLS, insecurePlaintext                                                           bool
		keepalive, dialTimeout, authRetry, drainTimeout, policyPoll                         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "provider",
		Short: "Carry a session's traffic: dial out to a broker and open the connections its workers ask for",
		Long: `Run a provider on a machine with egress. It keeps one outbound TLS connection to the broker and
opens the upstream connections the broker asks for, under its own target policy: --allow-targets
public (default: no private, loopback or metadata addresses), loopback, any, or --policy FILE. It
reconnects with backoff when the connection drops.

The broker's certificate is verified against the system roots, --ca FILE, or pinned with
--broker-fingerprint sha256:... (what the broker prints at startup; a ticket issued with --tls-cert
carries it). The ticket must be a provider ticket (swarm-proxy ticket --role provider).`,
		Example: `  # A provider ticket that pins the broker's self-signed certificate, then the provider:
  swarm-proxy ticket --session demo --role provider --secret-file secret --tls-cert broker.crt --out provider.json
  swarm-proxy provider --ticket provider.json --broker broker.example:7000

  # A broker certificate from a private CA, targets from a policy file:
  swarm-proxy provider --ticket provider.json --broker broker.example:7000 --ca ca.crt --policy targets.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				errs = append(errs, fmt.Errorf("--log-level: %q is not debug, info, warn or error", logLevel))
			}
			switch {
			case ticketFile != "" && (session != "" || token != ""):
				errs = append(errs, errors.New("give --ticket FILE or --session with --token, not both"))
			case ticketFile == "" && (session == "" || token == ""):
				errs = append(errs, errors.New("give --ticket FILE, or --session ID and --token T"))
			}
			if ticketFile != "" {
				if _, err := readTicket(ticketFile); err != nil {
					errs = append(errs, err)
				}
			}
			broker = proxyHostPort(broker) // one address syntax: http://HOST:PORT is HOST:PORT
			if broker == "" {
				errs = append(errs, errors.New("--broker is required (the broker's --provider-listen address)"))
			}
			if policyFile != "" && cmd.Flags().Changed("allow-targets") {
				errs = append(errs, errors.New("give --allow-targets or --policy, not both"))
			}
			var pol *policy.Policy
			var err error
			if policyFile != "" {
				pol, err = policy.Load(policyFile)
			} else {
				pol, err = policy.ForTargets(allowTargets)
			}
			if err != nil {
				errs = append(errs, err)
			}
			cfg := tunnel.Config{KeepAlive: keepalive}
			if err := cfg.Validate(); err != nil {
				errs = append(errs, err)
			}
			if pin == "" && ticketFile != "" && caFile == "" && !insecurePlaintext {
				// A ticket issued with the broker's certificate pins it.
				if tk, err := readTicket(ticketFile); err == nil {
					pin = tk.BrokerFingerprint
				}
			}
			tlsCfg, err := providerTLS(insecurePlaintext, caFile, pin)
			if err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			creds := func() (string, string, error) { return session, token, nil }
			if ticketFile != "" {
				// Re-read the file on every attempt so a renewed ticket is picked up.
				creds = func() (string, string, error) {
					tk, err := readTicket(ticketFile)
					return tk.SessionID, tk.Token, err
				}
			}
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			holder := policy.NewHolder(pol)
			if policyFile != "" {
				// Streams dial under the policy in force when they open; no cached state to drop.
				go watchPolicy(cmd.Context(), policyFile, policyPoll, holder, nil, func() {}, logger)
			}
			p := &tunnel.Provider{
				Broker:       broker,
				TLS:          tlsCfg,
				Credentials:  creds,
				Dialer:       dial.Deciding{Policy: holder.Load, Dialer: &dial.Direct{Policy: holder.Load, Timeout: dialTimeout}},
				RefusalNote:  refusalNote(policyFile, allowTargets),
				Config:       cfg,
				Backoff:      tunnel.Backoff{AuthRetry: authRetry},
				Logger:       logger,
				DrainTimeout: drainTimeout,
			}
			logger.Info("provider starting", "broker", broker, "tls", tlsCfg != nil, "targets", targetsName(policyFile, allowTargets))
			if tlsCfg == nil {
				logger.Warn("connecting to the broker in plaintext (--insecure-plaintext): nothing authenticates the broker, which can make this machine dial whatever its policy allows, and whoever sits between can read and forge the traffic")
			}
			return p.Run(cmd.Context())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&broker, "broker", "", "the broker's provider address (its --provider-listen), host:port (required)")
	fs.StringVar(&ticketFile, "ticket", "", "provider ticket `FILE`, written by swarm-proxy ticket --role provider --out FILE")
	fs.StringVar(&session, "session", "", "session id (with --token, instead of --ticket)")
	fs.StringVar(&token, "token", "", "session token (with --session, instead of --ticket)")
	fs.StringVar(&caFile, "ca", "", "CA certificate `FILE` (PEM) to verify the broker with, instead of the system roots")
	fs.StringVar(&pin, "broker-fingerprint", "", "pin the broker's certificate: sha256:<hex>, as the broker prints at startup (default: the ticket's broker_fingerprint)")
	fs.BoolVar(&insecurePlaintext, "insecure-plaintext", false, "connect without TLS (the broker needs --insecure-plaintext too); only on a network you trust")
	fs.BoolVar(&useTLS, "tls", false, "TLS is the default")
	fs.MarkDeprecated("tls", "TLS is the default; drop --tls")
	fs.StringVar(&allowTargets, "allow-targets", policy.TargetsPublic, "what this machine will dial: public, loopback or any")
	fs.StringVar(&policyFile, "policy", "", "target policy file (instead of --allow-targets); reloaded on SIGHUP and when it changes")
	fs.DurationVar(&policyPoll, "policy-poll", 2*time.Second, "how often to check --policy for changes (0: only on SIGHUP)")
	fs.DurationVar(&keepalive, "keepalive", tunnel.DefaultKeepAlive, "a silent broker connection is declared dead after this long")
	fs.DurationVar(&dialTimeout, "dial-timeout", dial.DefaultTimeout, "bound on resolving and connecting to a target")
	fs.DurationVar(&authRetry, "auth-retry", tunnel.DefaultBackoff.AuthRetry, "wait this long before retrying after the broker refused the ticket")
	fs.DurationVar(&drainTimeout, "drain-timeout", tunnel.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long open streams may finish (the broker sends no new ones)")
	fs.StringVar(&logLevel, "log-level", "info", "log level on stderr: debug, info, warn, error")
	return cmd
}

// providerTLS builds the provider's TLS settings: nil for plaintext, a pinned certificate, a CA file,
// or the system roots.
func providerTLS(plaintext bool, caFile, pin string) (*tls.Config, error) {
	switch {
	case plaintext && (caFile != "" || pin != ""):
		return nil, errors.New("--insecure-plaintext goes with neither --ca nor --broker-fingerprint")
	case plaintext:
		return nil, nil
	case pin != "" && caFile != "":
		return nil, errors.New("give --ca or --broker-fingerprint, not both")
	case pin != "":
		return tunnel.PinnedTLS(pin)
	case caFile != "":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in it", caFile)
		}
		return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}, nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS13}, nil
}

func readTicket(path string) (ticket.Ticket, error) {
	var tk ticket.Ticket
	b, err := os.ReadFile(path)
	if err != nil {
		return tk, fmt.Errorf("read ticket: %w", err)
	}
	if err := json.Unmarshal(b, &tk); err != nil {
		return tk, fmt.Errorf("read ticket %s: not the JSON of `swarm-proxy ticket --json`: %w", path, err)
	}
	if tk.SessionID == "" || tk.Token == "" {
		return tk, fmt.Errorf("read ticket %s: session_id and token are required", path)
	}
	if tk.Role == ticket.RoleWorker {
		return tk, fmt.Errorf("read ticket %s: this is a worker ticket; a provider needs one issued with swarm-proxy ticket --role provider", path)
	}
	return tk, nil
}

func targetsName(policyFile, allow string) string {
	if policyFile != "" {
		return policyFile
	}
	return allow
}

// refusalNote tells a worker whose target this provider refused what the provider dials: a built-in
// target set has no policy file that the refusal's reason could point to.
func refusalNote(policyFile, allow string) string {
	switch {
	case policyFile != "":
		return ""
	case allow == policy.TargetsLoopback:
		return "this provider only dials loopback targets (--allow-targets loopback)"
	case allow == policy.TargetsPublic:
		return "this provider does not dial private, loopback or metadata addresses (--allow-targets public)"
	}
	return ""
}
