package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// DefaultHealthURL is the admin health endpoint at the proxy's default admin address.
const DefaultHealthURL = "http://127.0.0.1:9090/healthz"

func newHealthCmd() *cobra.Command {
	var (
		url     string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Exit 0 if the admin health endpoint answers 200, 1 otherwise (for HEALTHCHECK in images without curl)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			msg, err := checkHealth(ctx, url)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", url, msg)
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", DefaultHealthURL, "health endpoint to query")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}

// checkHealth GETs url without any proxy and returns the first line of a 200 answer.
func checkHealth(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("health: %w", err)
	}
	// The health endpoint is local: the agent's proxy variables must not apply to it.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("health: %s: %s %s", url, resp.Status, line)
	}
	if line == "" {
		line = resp.Status
	}
	return line, nil
}
