package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

func newTicketCmd() *cobra.Command {
	var (
		session, broker, secretFile string
		ttl                         time.Duration
		asJSON                      bool
	)
	cmd := &cobra.Command{
		Use:   "ticket",
		Short: "Issue a session ticket for workers (proxy credentials) and providers (tunnel login)",
		Long: `Issue a session ticket. The token is an HMAC of the session id and the expiry made with the
broker's secret (--secret-file, or the SWARM_PROXY_SECRET environment variable), so the broker
verifies it without a database. Workers send session_id:token as proxy credentials; providers
log in to the broker with it (provider --ticket FILE).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ticket.ValidSession(session); err != nil {
				return fmt.Errorf("--session: %w", err)
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
			tk, err := auth.Issue(session, ttl)
			if err != nil {
				return err
			}
			tk.BrokerAddr = broker
			out := cmd.OutOrStdout()
			if asJSON {
				b, err := json.Marshal(tk)
				if err != nil {
					return fmt.Errorf("encode ticket: %w", err)
				}
				fmt.Fprintf(out, "%s\n", b)
				return nil
			}
			fmt.Fprintf(out, "session_id:  %s\ntoken:       %s\nexpires_at:  %s\n", tk.SessionID, tk.Token, tk.ExpiresAt.Format(time.RFC3339))
			if broker == "" {
				fmt.Fprintf(out, "broker_addr: (none: give --broker HOST:PORT, the broker's --listen address, to put it in the ticket)\n")
				return nil
			}
			fmt.Fprintf(out, "broker_addr: %s\n\nworkers:     export HTTPS_PROXY=http://%s:%s@%s HTTP_PROXY=http://%s:%s@%s\n",
				broker, tk.SessionID, tk.Token, broker, tk.SessionID, tk.Token, broker)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&session, "session", "", "session id: 1-128 characters of A-Z a-z 0-9 . _ - (required)")
	fs.DurationVar(&ttl, "ttl", time.Hour, "how long the ticket is valid")
	fs.StringVar(&broker, "broker", "", "broker address to put in the ticket (the workers' proxy address)")
	fs.StringVar(&secretFile, "secret-file", "", "file holding the broker's secret, at least 32 bytes (default: $"+ticket.EnvSecret+")")
	fs.BoolVar(&asJSON, "json", false, `print {"session_id","token","broker_addr","expires_at"} as JSON (broker_addr is "" without --broker)`)
	cmd.MarkFlagRequired("session")
	return cmd
}
