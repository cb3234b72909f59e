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
		broker, ticketFile, session, token, caFile, allowTargets, policyFile, logLevel string
		useTLS                                                                         bool
		keepalive, dialTimeout, authRetry, drainTimeout, policyPoll                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "provider",
		Short: "Carry a session's traffic: dial out to a broker and open the connections its workers ask for",
		Long: `Run a provider on a machine with egress. It keeps one outbound connection to the broker (TLS with
--tls or --ca) and opens the upstream connections the broker asks for, under its own target policy:
--allow-targets public (default: no private, loopback or metadata addresses), loopback, any, or
--policy FILE. It reconnects with backoff when the connection drops.`,
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
			var tlsCfg *tls.Config
			if useTLS || caFile != "" {
				tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
				if caFile != "" {
					pem, err := os.ReadFile(caFile)
					pool := x509.NewCertPool()
					if err != nil {
						errs = append(errs, fmt.Errorf("--ca: %w", err))
					} else if !pool.AppendCertsFromPEM(pem) {
						errs = append(errs, fmt.Errorf("--ca %s: no PEM certificate in it", caFile))
					}
					tlsCfg.RootCAs = pool
				}
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
				go watchPolicy(cmd.Context(), policyFile, policyPoll, holder, func() {}, logger)
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
			return p.Run(cmd.Context())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&broker, "broker", "", "the broker's provider address (its --provider-listen), host:port (required)")
	fs.StringVar(&ticketFile, "ticket", "", "ticket file written by `swarm-proxy ticket --json`")
	fs.StringVar(&session, "session", "", "session id (with --token, instead of --ticket)")
	fs.StringVar(&token, "token", "", "session token (with --session, instead of --ticket)")
	fs.StringVar(&caFile, "ca", "", "CA certificate (PEM) to verify the broker with; implies --tls")
	fs.BoolVar(&useTLS, "tls", false, "connect to the broker over TLS, verifying it with the system roots (or --ca)")
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
