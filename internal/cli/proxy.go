package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newProxyCmd is being written (issue 2).
func newProxyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "proxy",
		Short: "Run the egress proxy",
		Args:  noArgs,
		RunE:  func(*cobra.Command, []string) error { return errors.New("not yet") },
	}
}
