package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
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
  swarm-proxy env --secrets secrets.yaml                        # GITHUB_TOKEN=swarm-proxy-secret:github ...

With --ca (HTTPS inspection, see docs/inspection.md) it adds the variables that make common tools
trust the inspection CA: SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, GIT_SSL_CAINFO, PIP_CERT,
AWS_CA_BUNDLE and CARGO_HTTP_CAINFO name the bundle (the system roots plus the CA, written by
"swarm-proxy ca bundle"; --ca-bundle, default ca-bundle.pem beside --ca), NODE_EXTRA_CA_CERTS the CA
alone. Paths are as the agent sees them. With --format dockerfile, --ca is the CA's path in the
build context: the output copies it into the image's trust store and points the variables there.`,
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
					cfg.Proxy = proxyFlagURL(t.BrokerAddr)
				}
			}
			w := cmd.OutOrStdout()
			if cfg.CA != "" {
				if err := caPaths(cmd, &cfg, agentenv.Format(format)); err != nil {
					return err
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
			return agentenv.Render(w, agentenv.Format(format), vars)
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
	f.StringVar(&cfg.CA, "ca", "", "inspection CA certificate (ca.pem) as the agent sees it: adds the variables that make tools trust it")
	f.StringVar(&cfg.CABundle, "ca-bundle", "", "system roots plus the CA (swarm-proxy ca bundle) as the agent sees it (default: "+agentenv.DefaultBundleName+" beside --ca)")
	f.StringVar(&secretsFile, "secrets", "", "the proxy's secrets file: add each secret's placeholder_env set to its placeholder (swarm-proxy-secret:NAME); values are not read")
	f.StringVar(&format, "format", string(agentenv.FormatSh), "output format: "+strings.Join(formats, ", "))
	return cmd
}

// caPaths settles where the agent finds the CA and the bundle for format f. sh and fish are evaluated
// here, so relative paths become absolute and a missing bundle gets a note; compose and json describe
// another machine, so they need absolute paths; dockerfile installs the CA into the image.
func caPaths(cmd *cobra.Command, cfg *agentenv.Config, f agentenv.Format) error {
	switch f {
	case agentenv.FormatDockerfile:
		if cfg.CABundle != "" {
			return errors.New("env: --ca-bundle does not apply to --format dockerfile: the image's own bundle is used")
		}
		if _, err := io.WriteString(cmd.OutOrStdout(), agentenv.DockerfileInstallCA(cfg.CA)); err != nil {
			return err
		}
		cfg.CA, cfg.CABundle = agentenv.DockerCAPath, agentenv.DockerBundlePath
		return nil
	case agentenv.FormatSh, agentenv.FormatFish:
		var err error
		if cfg.CA, err = filepath.Abs(cfg.CA); err != nil {
			return fmt.Errorf("env: --ca: %w", err)
		}
		if cfg.CABundle != "" {
			if cfg.CABundle, err = filepath.Abs(cfg.CABundle); err != nil {
				return fmt.Errorf("env: --ca-bundle: %w", err)
			}
		}
		if _, err := os.Stat(cfg.CA); err != nil {
			return fmt.Errorf("env: --ca: %w", err)
		}
		if b := cfg.BundlePath(); !fileExists(b) {
			fmt.Fprintf(cmd.ErrOrStderr(), "env: note: %s does not exist; write it with: swarm-proxy ca bundle --ca %s --out %s\n", b, cfg.CA, b)
		}
		return nil
	default:
		for _, p := range []string{cfg.CA, cfg.CABundle} {
			if p != "" && !path.IsAbs(p) && !filepath.IsAbs(p) {
				return fmt.Errorf("env: %q: give absolute paths with --format %s: tools resolve a relative one from their own working directory", p, f)
			}
		}
		return nil
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
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
