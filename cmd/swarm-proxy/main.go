// Command swarm-proxy is an egress gateway for AI agents and CI workers in sandboxes.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/swarm-proxy/swarm-proxy/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		// Most errors already start with the command that failed ("swarm-proxy proxy: ...").
		msg := err.Error()
		if !strings.HasPrefix(msg, "swarm-proxy") {
			msg = "swarm-proxy: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(cli.ExitCode(err))
	}
}
