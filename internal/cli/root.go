// Package cli implements the swarm-proxy command line: a root command and one file per subcommand.
// Commands never exit the process; they return errors that main prints.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Run executes the command line args (without the program name).
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

// ExitError carries a specific exit code (for example "policy replay" found denials).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode is the process exit code for an error returned by Run.
func ExitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return 1
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "swarm-proxy",
		Short:         "Egress gateway for AI agents and CI workers in sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		Version:       version(),
	}
	root.SetVersionTemplate("swarm-proxy {{.Version}}\n")
	root.AddCommand(
		newProxyCmd(),
		newPolicyCmd(),
		newEnvCmd(), newFirewallCmd(), newDoctorCmd(), newHealthCmd(),
		newLogsCmd(),
		newConnectCmd(), newForwardCmd(),
		newTicketCmd(), newBrokerCmd(), newProviderCmd(),
		newCACmd(),
	)
	return root
}

// version says which build this is: the module version when installed with go install, else the
// VCS revision the binary was built from (with "+dirty" for uncommitted changes), and Go's version.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown build)"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; rev != "" {
			v += " " + rev[:min(12, len(rev))]
			if settings["vcs.modified"] == "true" {
				v += "+dirty"
			}
		}
	}
	return v + " " + bi.GoVersion
}

// noArgs rejects stray positional arguments with a message that names them.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s: unexpected argument %q (see %s --help)", cmd.CommandPath(), args[0], cmd.CommandPath())
	}
	return nil
}
