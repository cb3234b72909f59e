package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
	"github.com/swarm-proxy/swarm-proxy/internal/tunnel"
)

func newTicketCmd() *cobra.Command {
	var (
		session, broker, secretFile, role, out, tlsCert string
		ttl                                             time.Duration
		asJSON                                          bool
	)
	cmd := &cobra.Command{
		Use:   "ticket",
		Short: "Issue a session ticket for workers (proxy credentials) or providers (tunnel login)",
		Long: `Issue a session ticket. The token is an HMAC of the role, the session id and the expiry made
with the broker's secret (--secret-file, or the SWARM_PROXY_SECRET environment variable), so the
broker verifies it without a database. A ticket has one role: --role worker (the default) is proxy
credentials, session_id:token; --role provider logs a provider in to the broker (provider --ticket
FILE). Neither works as the other. --out FILE writes the ticket readable by its owner only.`,
		Example: `  # A provider's ticket, pinned to the broker's certificate:
  swarm-proxy ticket --session demo --role provider --secret-file secret --tls-cert broker.crt --out provider.json

  # A worker's ticket, with ready-made HTTP_PROXY lines:
  swarm-proxy ticket --session demo --broker 127.0.0.1:8080 --secret-file secret

  # The same as JSON, in a file only its owner can read:
  swarm-proxy ticket --session demo --broker 127.0.0.1:8080 --secret-file secret --json --out worker.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ticket.ValidSession(session); err != nil {
				return fmt.Errorf("--session: %w", err)
			}
			r, err := ticket.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %v: must be positive", ttl)
			}
			secret, err := ticket.LoadSecret(secretFile)
			if err != nil {
				return err
			}
			auth, err := ticket.New(secret)
			if err != nil {
				return err
			}
			tk, err := auth.Issue(session, r, ttl)
			if err != nil {
				return err
			}
			tk.BrokerAddr = proxyHostPort(broker) // one address syntax: http://HOST:PORT is HOST:PORT
			if tlsCert != "" {
				if tk.BrokerFingerprint, err = tunnel.FingerprintFile(tlsCert); err != nil {
					return fmt.Errorf("--tls-cert: %w", err)
				}
			}
			var buf bytes.Buffer
			if asJSON || out != "" {
				b, err := json.Marshal(tk)
				if err != nil {
					return fmt.Errorf("encode ticket: %w", err)
				}
				fmt.Fprintf(&buf, "%s\n", b)
			} else {
				writeTicketText(&buf, tk)
			}
			if out == "" {
				_, err := cmd.OutOrStdout().Write(buf.Bytes())
				return err
			}
			return writePrivate(out, buf.Bytes())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&session, "session", "", "session id: 1-128 characters of A-Z a-z 0-9 . _ - (required)")
	fs.StringVar(&role, "role", string(ticket.RoleWorker), "worker (proxy credentials) or provider (tunnel login)")
	fs.DurationVar(&ttl, "ttl", time.Hour, "how long the ticket is valid")
	fs.StringVar(&broker, "broker", "", "broker address to put in the ticket (the workers' proxy address)")
	fs.StringVar(&secretFile, "secret-file", "", "file holding the broker's secret, at least 32 bytes, mode 0600 (default: $"+ticket.EnvSecret+")")
	fs.StringVar(&tlsCert, "tls-cert", "", "the broker's provider-port certificate (PEM): its fingerprint goes in the ticket as broker_fingerprint")
	fs.StringVar(&out, "out", "", "write the ticket as JSON to this file, mode 0600, instead of printing it")
	fs.BoolVar(&asJSON, "json", false, `print {"session_id","role","token","token_id","broker_addr","expires_at"} as JSON (broker_addr is "" without --broker)`)
	cmd.MarkFlagRequired("session")
	return cmd
}

func writeTicketText(buf *bytes.Buffer, tk ticket.Ticket) {
	fmt.Fprintf(buf, "session_id:  %s\nrole:        %s\ntoken:       %s\ntoken_id:    %s\nexpires_at:  %s\n", tk.SessionID, tk.Role, tk.Token, tk.TokenID, tk.ExpiresAt.Format(time.RFC3339))
	if tk.BrokerFingerprint != "" {
		fmt.Fprintf(buf, "broker_fingerprint: %s\n", tk.BrokerFingerprint)
	}
	switch {
	case tk.Role == ticket.RoleProvider:
		fmt.Fprintf(buf, "\nproviders:   swarm-proxy provider --ticket FILE (write the ticket with --out FILE)\n")
	case tk.BrokerAddr == "":
		fmt.Fprintf(buf, "broker_addr: (none: give --broker HOST:PORT, the broker's --listen address, to put it in the ticket)\n")
	default:
		fmt.Fprintf(buf, "broker_addr: %s\n\nworkers:     export HTTPS_PROXY=http://%s:%s@%s HTTP_PROXY=http://%s:%s@%s\n",
			tk.BrokerAddr, tk.SessionID, tk.Token, tk.BrokerAddr, tk.SessionID, tk.Token, tk.BrokerAddr)
	}
}

// writePrivate writes b to path readable and writable by its owner only, replacing what was there
// (through a temporary file, so a reader never sees half a ticket).
func writePrivate(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".ticket-*")
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("--out: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("--out: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	return nil
}
