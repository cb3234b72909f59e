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

// providerFlags are the provider command's flags.
type providerFlags struct {
	broker, ticketFile, session, token, caFile, allowTargets, policyFile, logLevel, pin string
	useTLS, insecurePlaintext                                                           bool
	keepalive, dialTimeout, authRetry, drainTimeout, policyPoll                         time.Duration
}

func newProviderCmd() *cobra.Command {
	var f providerFlags
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
			p, err := f.provider(cmd)
			if err != nil {
				return err
			}
			return p.Run(cmd.Context())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.broker, "broker", "", "the broker's provider address (its --provider-listen), host:port (required)")
	fs.StringVar(&f.ticketFile, "ticket", "", "provider ticket `FILE`, written by swarm-proxy ticket --role provider --out FILE")
	fs.StringVar(&f.session, "session", "", "session id (with --token, instead of --ticket)")
	fs.StringVar(&f.token, "token", "", "session token (with --session, instead of --ticket)")
	fs.StringVar(&f.caFile, "ca", "", "CA certificate `FILE` (PEM) to verify the broker with, instead of the system roots")
	fs.StringVar(&f.pin, "broker-fingerprint", "", "pin the broker's certificate: sha256:<hex>, as the broker prints at startup (default: the ticket's broker_fingerprint)")
	fs.BoolVar(&f.insecurePlaintext, "insecure-plaintext", false, "connect without TLS (the broker needs --insecure-plaintext too); only on a network you trust")
	fs.BoolVar(&f.useTLS, "tls", false, "TLS is the default")
	fs.MarkDeprecated("tls", "TLS is the default; drop --tls")
	fs.StringVar(&f.allowTargets, "allow-targets", policy.TargetsPublic, "what this machine will dial: public, loopback or any")
	fs.StringVar(&f.policyFile, "policy", "", "target policy file (instead of --allow-targets); reloaded on SIGHUP and when it changes")
	fs.DurationVar(&f.policyPoll, "policy-poll", 2*time.Second, "how often to check --policy for changes (0: only on SIGHUP)")
	fs.DurationVar(&f.keepalive, "keepalive", tunnel.DefaultKeepAlive, "a silent broker connection is declared dead after this long")
	fs.DurationVar(&f.dialTimeout, "dial-timeout", dial.DefaultTimeout, "bound on resolving and connecting to a target")
	fs.DurationVar(&f.authRetry, "auth-retry", tunnel.DefaultBackoff.AuthRetry, "wait this long before retrying after the broker refused the ticket")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", tunnel.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long open streams may finish (the broker sends no new ones)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level on stderr: debug, info, warn, error")
	return cmd
}

// provider checks the flags, reporting every problem at once, and builds the provider they
// describe.
func (f *providerFlags) provider(cmd *cobra.Command) (*tunnel.Provider, error) {
	var errs []error
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %q is not debug, info, warn or error", f.logLevel))
	}
	switch {
	case f.ticketFile != "" && (f.session != "" || f.token != ""):
		errs = append(errs, errors.New("give --ticket FILE or --session with --token, not both"))
	case f.ticketFile == "" && (f.session == "" || f.token == ""):
		errs = append(errs, errors.New("give --ticket FILE, or --session ID and --token T"))
	}
	if f.ticketFile != "" {
		if _, err := readTicket(f.ticketFile); err != nil {
			errs = append(errs, err)
		}
	}
	f.broker = proxyHostPort(f.broker) // one address syntax: http://HOST:PORT is HOST:PORT
	if f.broker == "" {
		errs = append(errs, errors.New("--broker is required (the broker's --provider-listen address)"))
	}
	pol, err := f.targetPolicy(cmd)
	if err != nil {
		errs = append(errs, err)
	}
	cfg := tunnel.Config{KeepAlive: f.keepalive}
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	tlsCfg, err := f.tls()
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
	holder := policy.NewHolder(pol)
	if f.policyFile != "" {
		// Streams dial under the policy in force when they open; no cached state to drop.
		go watchPolicy(cmd.Context(), f.policyFile, f.policyPoll, holder, nil, func() {}, logger)
	}
	logger.Info("provider starting", "broker", f.broker, "tls", tlsCfg != nil, "targets", targetsName(f.policyFile, f.allowTargets))
	if tlsCfg == nil {
		logger.Warn("connecting to the broker in plaintext (--insecure-plaintext): nothing authenticates the broker, which can make this machine dial whatever its policy allows, and whoever sits between can read and forge the traffic")
	}
	return &tunnel.Provider{
		Broker:       f.broker,
		TLS:          tlsCfg,
		Credentials:  f.credentials(),
		Dialer:       dial.Deciding{Policy: holder.Load, Dialer: &dial.Direct{Policy: holder.Load, Timeout: f.dialTimeout}},
		RefusalNote:  refusalNote(f.policyFile, f.allowTargets),
		Config:       cfg,
		Backoff:      tunnel.Backoff{AuthRetry: f.authRetry},
		Logger:       logger,
		DrainTimeout: f.drainTimeout,
	}, nil
}

// targetPolicy is the provider's own target policy: --policy FILE or --allow-targets.
func (f *providerFlags) targetPolicy(cmd *cobra.Command) (*policy.Policy, error) {
	if f.policyFile != "" && cmd.Flags().Changed("allow-targets") {
		return nil, errors.New("give --allow-targets or --policy, not both")
	}
	if f.policyFile != "" {
		return policy.Load(f.policyFile)
	}
	return policy.ForTargets(f.allowTargets)
}

// tls is the TLS configuration towards the broker; a ticket issued with the broker's certificate
// pins it unless --ca, --broker-fingerprint or --insecure-plaintext says otherwise.
func (f *providerFlags) tls() (*tls.Config, error) {
	pin := f.pin
	if pin == "" && f.ticketFile != "" && f.caFile == "" && !f.insecurePlaintext {
		if tk, err := readTicket(f.ticketFile); err == nil {
			pin = tk.BrokerFingerprint
		}
	}
	return providerTLS(f.insecurePlaintext, f.caFile, pin)
}

// credentials returns the session and token: from the flags, or from the ticket file, re-read on
// every attempt so that a renewed ticket is picked up.
func (f *providerFlags) credentials() func() (string, string, error) {
	if f.ticketFile == "" {
		return func() (string, string, error) { return f.session, f.token, nil }
	}
	return func() (string, string, error) {
		tk, err := readTicket(f.ticketFile)
		return tk.SessionID, tk.Token, err
	}
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
