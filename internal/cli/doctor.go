package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newDoctorCmd() *cobra.Command {
	return &cobra.Command{Use: "doctor", Args: noArgs, RunE: func(*cobra.Command, []string) error { return errors.New("not yet") }}
}
