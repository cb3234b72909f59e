package cli

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/agentenv"
	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

func newEnvCmd() *cobra.Command {
	var (
		cfg         agentenv.Config
		ticketFile  string
		format      string
		secretsFile string
	)
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Print the environment variables that route an agent's tools through the proxy",
		Long: `Print HTTP_PROXY, HTTPS_PROXY, ALL_PROXY (with --socks), their lowercase twins, NO_PROXY and
NODE_USE_ENV_PROXY=1, quoted for the chosen format. With --ticket (broker mode) the session id and token
from "swarm-proxy ticket --json" go in the proxy URLs as percent-encoded user and password.

  eval "$(swarm-proxy env --proxy http://proxy:8080)"          # sh, bash, zsh
  swarm-proxy env --format fish | source                        # fish
  swarm-proxy env --format dockerfile >> Dockerfile
  swarm-proxy env --format compose                              # an environment: block for compose.yaml
  swarm-proxy env --secrets secrets.yaml                        # GITHUB_TOKEN=swarm-proxy-secret:github ...`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ticketFile != "" {
				t, err := agentenv.LoadTicket(ticketFile, time.Now())
				if err != nil {
					return fmt.Errorf("env: %w", err)
				}
				cfg.Ticket = t
				// The ticket names the broker's address for workers; --proxy overrides it.
				if !cmd.Flags().Changed("proxy") && t.BrokerAddr != "" {
					cfg.Proxy = "http://" + t.BrokerAddr
				}
			}
			vars, err := agentenv.Vars(cfg)
			if err != nil {
				return err
			}
			if secretsFile != "" {
				if vars, err = withPlaceholders(vars, secretsFile); err != nil {
					return err
				}
			}
			return agentenv.Render(cmd.OutOrStdout(), agentenv.Format(format), vars)
		},
	}
	formats := make([]string, len(agentenv.Formats))
	for i, f := range agentenv.Formats {
		formats[i] = string(f)
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Proxy, "proxy", agentenv.DefaultProxy, "HTTP proxy URL the agent uses (with --ticket: default http://BROKER_ADDR from the ticket)")
	f.StringVar(&cfg.SOCKS, "socks", "", "SOCKS5 proxy URL for ALL_PROXY, e.g. socks5h://proxy:1080 (unset: no ALL_PROXY)")
	f.StringVar(&ticketFile, "ticket", "", "broker mode: ticket file from \"swarm-proxy ticket --json\"; its credentials go in the proxy URLs")
	f.StringSliceVar(&cfg.NoProxy, "no-proxy", nil, "hosts, domains (.example.com) or CIDRs that bypass the proxy, added to "+strings.Join(agentenv.DefaultNoProxy, ","))
	f.StringVar(&secretsFile, "secrets", "", "the proxy's secrets file: add each secret's placeholder_env set to its placeholder (swarm-proxy-secret:NAME); values are not read")
	f.StringVar(&format, "format", string(agentenv.FormatSh), "output format: "+strings.Join(formats, ", "))
	return cmd
}

// withPlaceholders adds, for each secret of the secrets file that has a placeholder_env, that variable
// set to the secret's placeholder. The values are not read: the agent gets only placeholders.
func withPlaceholders(vars []agentenv.Var, path string) ([]agentenv.Var, error) {
	f, err := secrets.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("env: %w", err)
	}
	for _, s := range f.Specs {
		if s.PlaceholderEnv == "" {
			continue
		}
		if slices.ContainsFunc(vars, func(v agentenv.Var) bool { return strings.EqualFold(v.Name, s.PlaceholderEnv) }) {
			return nil, fmt.Errorf("env: %s:%d: placeholder_env %s of secret %q is a variable that env sets itself", path, s.Line, s.PlaceholderEnv, s.Name)
		}
		vars = append(vars, agentenv.Var{Name: s.PlaceholderEnv, Value: secrets.Placeholder(s.Name)})
	}
	return vars, nil
}
