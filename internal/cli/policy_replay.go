package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/logstats"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// ExitReplayDenied is the exit code of "policy replay" when recorded traffic would be denied.
const ExitReplayDenied = 3

func newPolicyReplayCmd() *cobra.Command {
	var (
		f              logFlags
		asJSON         bool
		excludeBlocked bool
	)
	cmd := &cobra.Command{
		Use:   "replay POLICY [LOGS...]",
		Short: "Run recorded traffic against a candidate policy: what would be allowed, what would be denied",
		Long: `Decide every request in the access logs with POLICY, as the proxy would, and report what would be
denied (grouped by host, with the clients that would break) and what would be allowed.

Exit status: 0 when everything observed would be allowed, 3 when something would be denied, 1 on
errors, 2 on a wrong command line. A request is decided with the address the proxy dialed for it
(the log's upstream), so the rule named is the one the proxy logs; without one, by its name (a
localhost name at its loopback addresses). Replay resolves nothing: the proxy resolves a name when
it dials, and refuses it then if it resolves to a private, loopback or metadata address that no
allow cidr rule covers. LOGS are plain or gzip-compressed; with none, or "-", standard input is read.`,
		Example: `  swarm-proxy policy replay policy.yaml /var/log/swarm-proxy/access*.log*
  swarm-proxy policy replay --json policy.yaml access.log > replay.json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return fmt.Errorf("%s: want POLICY [LOGS...] (see %s --help)", cmd.CommandPath(), cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			filter, err := f.filter(time.Now())
			if err != nil {
				return fmt.Errorf("policy replay: %w", err)
			}
			filter.AllowedOnly = excludeBlocked
			p, err := policy.Load(args[0])
			if err != nil {
				return fmt.Errorf("policy replay: %w", err)
			}
			r := logstats.NewReplayer(p)
			st, err := readLogs(cmd, args[1:], func(e *logstats.Entry) {
				if filter.Match(e) {
					r.Add(e)
				}
			})
			if err != nil {
				return err
			}
			res := r.Result()
			res.Malformed = st.Malformed
			if asJSON {
				err = res.WriteJSON(cmd.OutOrStdout())
			} else {
				err = res.WriteTable(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if res.DeniedRequests > 0 {
				hosts := map[string]bool{}
				for _, g := range res.WouldDeny {
					hosts[g.Host] = true
				}
				return &ExitError{Code: ExitReplayDenied, Err: fmt.Errorf("policy replay: %d of %d observed requests (to %d %s) would be denied by %s",
					res.DeniedRequests, res.Requests, len(hosts), pluralS(len(hosts), "host"), args[0])}
			}
			return nil
		},
	}
	f.register(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of tables (the exit status is the same)")
	cmd.Flags().BoolVar(&excludeBlocked, "exclude-blocked", false, "leave out requests the proxy already refused when they were recorded")
	return cmd
}
