package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/doctor"
)

func newDoctorCmd() *cobra.Command {
	var (
		cfg    doctor.Config
		expect string
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check, inside an agent's environment, that its tools will go through the proxy",
		Long: `Run inside the agent's environment (container, namespace, CI job). One line per check, ok, warn
or fail, with the fix: the proxy variables present and well-formed; the proxy reachable and healthy
(--admin, or guessed as port 9090 of the proxy host); requests through it (--url, repeatable)
allowed or blocked as --expect says, read from the X-Swarm-Proxy-Decision header of the proxy's
403s; and which installed tools (curl, git, npm, pip, node, python3, go) honour the variables and
NO_PROXY; with --ca (or NODE_EXTRA_CA_CERTS set), whether curl, Python, Node and git trust the
HTTPS inspection CA through the roots file each one reads. Exits 1 when any check fails.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch doctor.Expectation(expect) {
			case doctor.ExpectAny, doctor.ExpectAllow, doctor.ExpectDeny:
				cfg.Expect = doctor.Expectation(expect)
			default:
				return fmt.Errorf("doctor: --expect %q: want allow or deny", expect)
			}
			w := cmd.OutOrStdout()
			results := doctor.Run(cmd.Context(), cfg, func(r doctor.Result) { fmt.Fprintln(w, r) })
			if doctor.Failed(results) {
				n := 0
				for _, r := range results {
					if r.Status == doctor.Fail {
						n++
					}
				}
				return &ExitError{Code: 1, Err: fmt.Errorf("doctor: %d of %d checks failed", n, len(results))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Proxy, "proxy", "", "the proxy the agent should use (default: the one in HTTPS_PROXY/HTTP_PROXY)")
	f.StringVar(&cfg.Admin, "admin", "", "the proxy's health URL, e.g. http://proxy:9090/healthz (default: guessed, and only a warning if it does not answer)")
	f.StringSliceVar(&cfg.URLs, "url", nil, "URL to request through the proxy (repeatable); without it a probe checks that swarm-proxy answers")
	f.StringVar(&expect, "expect", "", "what every --url should meet: allow or deny (default: report only)")
	f.DurationVar(&cfg.Timeout, "timeout", doctor.DefaultTimeout, "bound on each network check")
	f.StringVar(&cfg.CA, "ca", "", "HTTPS inspection CA (ca.pem): check that curl, Python, Node and git trust it (default: $NODE_EXTRA_CA_CERTS)")
	return cmd
}
