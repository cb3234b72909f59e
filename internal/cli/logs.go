package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/logstats"
)

func newLogsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Read access logs back: which hosts were used, by whom",
		Args:  noArgs,
	}
	cmd.AddCommand(newLogsDomainsCmd())
	return cmd
}

func newLogsDomainsCmd() *cobra.Command {
	var (
		f      logFlags
		asJSON bool
		by     string
	)
	cmd := &cobra.Command{
		Use:   "domains [FILES...]",
		Short: "One row per host: requests, allowed, blocked, methods, ports, bytes, first and last seen, clients, DNS lookups",
		Long: `Report every host in the access logs: requests, allowed and blocked counts, methods, ports, bytes
each way, first and last seen, and the clients and sessions that used it, most requested first.
The DNS guard's records are counted beside them as lookups (with those it refused), and a name that
was looked up but never connected to is shown as such.

FILES are access logs as the proxy writes them, plain or gzip-compressed, so rotated files can be
given together (access*.log*). With no FILES, or "-", the log is read from standard input.
Malformed lines are skipped and reported on standard error; a file in which no line is an access-log
record is an error (exit 1).`,
		Example: `  swarm-proxy logs domains /var/log/swarm-proxy/access*.log*
  swarm-proxy logs domains --by session --since 2h access.log
  swarm-proxy logs domains --blocked-only --json access.log | jq '.hosts[].host'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if by != logstats.ByHost && by != logstats.BySession && by != logstats.ByClient {
				return fmt.Errorf("logs domains: --by %q: want host, session or client", by)
			}
			filter, err := f.filter(time.Now())
			if err != nil {
				return fmt.Errorf("logs domains: %w", err)
			}
			report := &logstats.DomainReport{}
			domains := logstats.NewDomains()
			grouped := logstats.NewGrouped(by)
			st, err := readLogs(cmd, args, func(e *logstats.Entry) {
				if !filter.Match(e) {
					return
				}
				report.Count(e)
				if by == logstats.ByHost {
					domains.Add(e)
				} else {
					grouped.Add(e)
				}
			})
			if err != nil {
				return err
			}
			report.Malformed = st.Malformed
			if by == logstats.ByHost {
				report.Hosts = domains.Rows()
			} else {
				report.Groups = grouped.Groups()
			}
			if asJSON {
				return report.WriteJSON(cmd.OutOrStdout())
			}
			return report.WriteTable(cmd.OutOrStdout())
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	cmd.Flags().StringVar(&by, "by", logstats.ByHost, "group by host, session (falling back to the client when a record has no session) or client")
	return cmd
}

// logFlags are the record filters shared by the commands that read logs.
type logFlags struct {
	since, until string
	sessions     []string
	clients      []string
	blockedOnly  bool
}

func (f *logFlags) register(cmd *cobra.Command, blockedOnly bool) {
	fs := cmd.Flags()
	fs.StringVar(&f.since, "since", "", "only records at or after this time: RFC 3339, a date (from its start, UTC), or a duration before now (2h)")
	fs.StringVar(&f.until, "until", "", "only records at or before this time (same forms as --since; a date includes that whole day, UTC)")
	fs.StringSliceVar(&f.sessions, "session", nil, "only records of this session (repeat or comma-separate for several)")
	fs.StringSliceVar(&f.clients, "client", nil, "only records from this client address or prefix (repeatable)")
	if blockedOnly {
		fs.BoolVar(&f.blockedOnly, "blocked-only", false, "only requests the proxy refused")
	}
}

func (f *logFlags) filter(now time.Time) (logstats.Filter, error) {
	var out logstats.Filter
	var err error
	if f.since != "" {
		if out.Since, err = logstats.ParseTime(f.since, now); err != nil {
			return out, fmt.Errorf("--since: %w", err)
		}
	}
	if f.until != "" {
		if out.Until, err = logstats.ParseUntil(f.until, now); err != nil {
			return out, fmt.Errorf("--until: %w", err)
		}
	}
	if !out.Since.IsZero() && !out.Until.IsZero() && out.Until.Before(out.Since) {
		return out, fmt.Errorf("--until %s is before --since %s", f.until, f.since)
	}
	for _, c := range f.clients {
		p, err := logstats.ParseClient(c)
		if err != nil {
			return out, fmt.Errorf("--client: %w", err)
		}
		out.Clients = append(out.Clients, p)
	}
	out.Sessions = f.sessions
	out.BlockedOnly = f.blockedOnly
	return out, nil
}

// readLogs streams the records of files (standard input when there are none, or for "-") to fn and
// reports malformed lines and damaged files on standard error.
func readLogs(cmd *cobra.Command, files []string, fn func(*logstats.Entry)) (*logstats.Stats, error) {
	var sources []logstats.Source
	for _, name := range files {
		if name == "-" {
			sources = append(sources, logstats.StreamSource("stdin", cmd.InOrStdin()))
			continue
		}
		if fi, err := os.Stat(name); err != nil {
			return nil, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
		} else if fi.IsDir() {
			return nil, fmt.Errorf("%s: %s is a directory: pass the log files (for example %s/*.log*)", cmd.CommandPath(), name, name)
		}
		sources = append(sources, logstats.FileSource(name))
	}
	if len(sources) == 0 {
		in := cmd.InOrStdin()
		if isTerminal(in) {
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: reading an access log from standard input (pass FILES, or pipe a log in)\n", cmd.CommandPath())
		}
		sources = append(sources, logstats.StreamSource("stdin", in))
	}
	st, err := logstats.Read(cmd.Context(), sources, fn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	// A report of nothing from a file that is not an access log would look like a quiet log.
	var notLogs []error
	for _, nl := range st.NotLogs {
		why := ""
		if nl.First.Reason != "" {
			why = fmt.Sprintf(" (line %d: %s)", nl.First.Line, nl.First.Reason)
		}
		notLogs = append(notLogs, fmt.Errorf("%s: %s is not a swarm-proxy access log: none of its %d %s is an access-log record%s",
			cmd.CommandPath(), nl.Source, nl.Lines, pluralS(int(nl.Lines), "line"), why))
	}
	if err := errors.Join(notLogs...); err != nil {
		return nil, err
	}
	for _, w := range st.Warnings() {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: warning: %s\n", cmd.CommandPath(), w)
	}
	return st, nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
