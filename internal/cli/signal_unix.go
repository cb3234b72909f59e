package cli

import (
	"os"
	"os/signal"
	"syscall"
)

func notifyHangup() chan os.Signal {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return c
}

func stopHangup(c chan os.Signal) { signal.Stop(c) }
