package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
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
	var secretsFile string
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file: exit 0, or print every problem with its line and exit 1",
		Args:  exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			if secretsFile != "" {
				if err := checkSecretNames(p, secretsFile); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (mode %s, %d allow rules, %d deny rules)\n", args[0], p.Mode, len(p.Allow), len(p.Deny))
			for _, r := range p.Allow {
				if r.UsesSecrets() && len(r.Ports) == 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "note: %s:%d: %s puts secrets in requests on every port; plain http:// requests through it are refused (secret_cleartext): give it ports: [443]\n", p.Source, r.Line, r.ID())
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&secretsFile, "secrets", "", "also check that every secret the rules name is defined in this secrets file (values are not read)")
	return cmd
}

// checkSecretNames reports every secret that a rule of p names and the secrets file does not define.
func checkSecretNames(p *policy.Policy, path string) error {
	f, err := secrets.ReadFile(path)
	if err != nil {
		return err
	}
	defined := map[string]bool{}
	for _, s := range f.Specs {
		defined[s.Name] = true
	}
	var problems []string
	for _, r := range p.Allow {
		for _, name := range r.Secrets {
			if !defined[name] {
				problems = append(problems, fmt.Sprintf("%s:%d: %s: secret %q is not defined in %s", p.Source, r.Line, r.ID(), name, path))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w:\n%s", policy.ErrInvalid, strings.Join(problems, "\n"))
	}
	return nil
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
