// Package cli implements the swarm-proxy command line: a root command and one file per subcommand.
// Commands never exit the process; they return errors that main prints.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"strings"

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

// ExitUsage is the exit code of a command line that swarm-proxy does not accept: an unknown
// command, argument or flag.
const ExitUsage = 2

// usageError is a command line that swarm-proxy does not accept.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// ExitCode is the process exit code for an error returned by Run.
func ExitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return 1
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "swarm-proxy",
		Short:         "Egress gateway for AI agents and CI workers in sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.SetVersionTemplate("swarm-proxy {{.Version}}\n")
	root.SetUsageTemplate(usageTemplate)
	root.AddCommand(
		newProxyCmd(),
		newPolicyCmd(),
		newEnvCmd(), newFirewallCmd(), newDoctorCmd(), newHealthCmd(),
		newLogsCmd(),
		newConnectCmd(), newForwardCmd(),
		newTicketCmd(), newBrokerCmd(), newProviderCmd(),
		newCACmd(),
		newVersionCmd(),
	)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{fmt.Errorf("%s: %w (see %s --help)", cmd.CommandPath(), err, cmd.CommandPath())}
	})
	usageErrors(root)
	return root
}

// usageTemplate is cobra's, with the examples last: after the flags a newcomer scrolled past, the
// last lines on the screen are command lines to copy.
const usageTemplate = `Usage:{{if .Runnable}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{end}}{{if .HasAvailableSubCommands}}

Available Commands:{{range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}
`

// usageErrors makes every wrong command line of cmd and its subcommands a usage error (exit 2): a
// command with subcommands names the unknown one it was given, with the commands it is close to;
// the argument checks of the others exit 2 too.
func usageErrors(cmd *cobra.Command) {
	if cmd.HasSubCommands() {
		cmd.Args = cobra.ArbitraryArgs
		cmd.SuggestionsMinimumDistance = 2
		cmd.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				for i := range s {
					s[i] = strconv.Quote(s[i])
				}
				msg += "; did you mean " + strings.Join(s, " or ") + "?"
			}
			return &usageError{fmt.Errorf("%s (see %s --help)", msg, cmd.CommandPath())}
		}
		for _, c := range cmd.Commands() {
			usageErrors(c)
		}
		return
	}
	if check := cmd.Args; check != nil {
		cmd.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return &usageError{err}
			}
			return nil
		}
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this build (as --version does)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "swarm-proxy %s\n", version())
			return err
		},
	}
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
