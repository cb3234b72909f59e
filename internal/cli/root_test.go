package cli

import (
	"regexp"
	"testing"
)

// TestVersion: --version names the build and the Go release it was built with.
func TestVersion(t *testing.T) {
	r := runCLI(t, "", "--version")
	if r.err != nil || !regexp.MustCompile(`^swarm-proxy \S.* go1\.\d+`).MatchString(r.stdout) {
		t.Fatalf("--version: %v, printed %q", r.err, r.stdout)
	}
}

// TestStrayArgument: a command that takes no arguments names the one it was given.
func TestStrayArgument(t *testing.T) {
	r := runCLI(t, "", "proxy", "extra")
	if r.err == nil || r.err.Error() != `swarm-proxy proxy: unexpected argument "extra" (see swarm-proxy proxy --help)` {
		t.Fatalf("err = %v", r.err)
	}
}
