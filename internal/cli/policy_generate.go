package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/logstats"
)

func newPolicyGenerateCmd() *cobra.Command {
	var (
		f      logFlags
		opts   logstats.GenerateOptions
		merge  string
		output string
	)
	cmd := &cobra.Command{
		Use:   "generate [FILES...]",
		Short: "Write an enforce-mode policy that allows exactly what the access logs show",
		Long: `Write a policy.yaml in enforce mode with one allow rule per host seen in the access logs, limited
to the ports it used; each rule's comment says how often and when it was seen. Review it, check it
with "policy replay", then run the proxy with it.

FILES are access logs, plain or gzip-compressed; with none, or "-", standard input is read.
Requests refused because a host is or resolved to a private, loopback or metadata address never
become rules: add an allow cidr rule by hand when such a destination is intended. Hosts that a deny
rule refused (error denied_by_rule) are left out too and listed in a comment at the end with the
rule that denied them; --include-denied puts them back. With --merge naming the policy that was in
force, its deny rules are kept in the result.

With --http, each host with inspected requests (logged under a rule with inspect: true, see
docs/inspection.md) gets an http list: the methods seen on each path pattern, where path segments
that look like ids (numbers, UUIDs, long hex) become "*". Review the patterns before enforcing.`,
		Example: `  swarm-proxy policy generate -o policy.yaml /var/log/swarm-proxy/access*.log*
  swarm-proxy policy generate --collapse 3 --merge policy.yaml -o policy.yaml access.log
  swarm-proxy policy generate --http access.log`,
		RunE: func(cmd *cobra.Command, args []string) error {
			filter, err := f.filter(time.Now())
			if err != nil {
				return fmt.Errorf("policy generate: %w", err)
			}
			if merge != "" {
				if opts.Merge, err = os.ReadFile(merge); err != nil {
					return fmt.Errorf("policy generate: --merge: %w", err)
				}
				opts.MergeName = merge
			}
			g, err := logstats.NewGenerator(opts)
			if err != nil {
				return err
			}
			if _, err := readLogs(cmd, args, func(e *logstats.Entry) {
				if filter.Match(e) {
					g.Add(e)
				}
			}); err != nil {
				return err
			}
			out, err := g.Generate()
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			for _, n := range out.Notes {
				fmt.Fprintf(stderr, "policy generate: note: %s\n", n)
			}
			if output == "" || output == "-" {
				_, err := cmd.OutOrStdout().Write(out.YAML)
				return err
			}
			if err := writeFileAtomic(output, out.YAML); err != nil {
				return fmt.Errorf("policy generate: %w", err)
			}
			fmt.Fprintf(stderr, "policy generate: wrote %s with %d new allow %s; review it, then: swarm-proxy policy replay %s LOGS...\n",
				output, out.Added, pluralS(out.Added, "rule"), output)
			return nil
		},
	}
	f.register(cmd, false)
	fs := cmd.Flags()
	fs.StringVarP(&output, "output", "o", "", "write the policy to this file instead of standard output (may be the --merge file)")
	fs.IntVar(&opts.Collapse, "collapse", 0, "turn N or more subdomains of one registrable domain into one *.domain rule (0: off)")
	fs.StringVar(&merge, "merge", "", "add to this existing policy, keeping its rules, their order and its comments")
	fs.BoolVar(&opts.HTTP, "http", false, "add http entries (methods per path pattern) from inspected requests")
	fs.BoolVar(&opts.ExcludeBlocked, "exclude-blocked", false, "leave out requests the proxy refused")
	fs.BoolVar(&opts.IncludeDenied, "include-denied", false, "also allow hosts that a deny rule refused (by default they are left out and listed in a comment)")
	return cmd
}

// writeFileAtomic replaces path with data, so a reader never sees half a policy.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func pluralS(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
