package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, explain, generate and replay policy files",
		Args:  noArgs,
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyGenerateCmd(), newPolicyReplayCmd(), newPolicyExplainCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file: exit 0, or print every problem with its line and exit 1",
		Args:  exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (mode %s, %d allow rules, %d deny rules)\n", args[0], p.Mode, len(p.Allow), len(p.Deny))
			return nil
		},
	}
}

// exactArgs requires n positional arguments, naming them in the error.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s: want %s, got %d arguments (see %s --help)", cmd.CommandPath(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}
