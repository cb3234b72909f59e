package cli

import (
	"regexp"
	"strings"
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

// TestVersionCommand: `swarm-proxy version` prints what --version prints.
func TestVersionCommand(t *testing.T) {
	flag, cmd := runCLI(t, "", "--version"), runCLI(t, "", "version")
	if cmd.err != nil || cmd.stdout != flag.stdout || !strings.HasPrefix(cmd.stdout, "swarm-proxy ") {
		t.Fatalf("version: %v, printed %q; --version printed %q", cmd.err, cmd.stdout, flag.stdout)
	}
}

// TestUsageErrors: a command line swarm-proxy does not accept exits 2 with a message that names
// the wrong part and, for a mistyped command, the commands it is close to; nothing goes to stdout.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"prxy"}, `unknown command "prxy" for "swarm-proxy"; did you mean "proxy"? (see swarm-proxy --help)`},
		{[]string{"xyzzy"}, `unknown command "xyzzy" for "swarm-proxy" (see swarm-proxy --help)`},
		{[]string{"policy", "chek", "p.yaml"}, `unknown command "chek" for "swarm-proxy policy"; did you mean "check"? (see swarm-proxy policy --help)`},
		{[]string{"logs", "dom"}, `unknown command "dom" for "swarm-proxy logs"; did you mean "domains"?`},
		{[]string{"proxy", "extra"}, `swarm-proxy proxy: unexpected argument "extra" (see swarm-proxy proxy --help)`},
		{[]string{"proxy", "--lisen", "127.0.0.1:1"}, `swarm-proxy proxy: unknown flag: --lisen (see swarm-proxy proxy --help)`},
		{[]string{"policy", "check"}, `swarm-proxy policy check: want FILE, got 0 arguments`},
		{[]string{"version", "x"}, `swarm-proxy version: unexpected argument "x"`},
	}
	for _, tt := range tests {
		r := runCLI(t, "", tt.args...)
		if r.err == nil || !strings.Contains(r.err.Error(), tt.want) || ExitCode(r.err) != ExitUsage || r.stdout != "" {
			t.Errorf("%q: exit %d, error %v, stdout %q; want exit 2 and %q", tt.args, ExitCode(r.err), r.err, r.stdout, tt.want)
		}
	}
	// A command group without a command shows its help, as a request for it.
	if r := runCLI(t, "", "policy"); r.err != nil || !strings.Contains(r.stdout, "Available Commands:") {
		t.Errorf("policy: %v\n%s", r.err, r.stdout)
	}
}

// TestHelpEndsWithExamples: a command's --help ends with its examples, after the flags; proxy has
// two or three.
func TestHelpEndsWithExamples(t *testing.T) {
	r := runCLI(t, "", "proxy", "--help")
	out := strings.TrimSpace(r.stdout)
	flags, examples := strings.Index(out, "\nFlags:\n"), strings.Index(out, "\nExamples:\n")
	if r.err != nil || flags < 0 || examples < flags {
		t.Fatalf("proxy --help: %v; Flags at %d, Examples at %d:\n%s", r.err, flags, examples, out)
	}
	var cmds []string
	for _, l := range strings.Split(out[examples:], "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "swarm-proxy proxy") {
			cmds = append(cmds, l)
		}
	}
	last := out[strings.LastIndexByte(out, '\n')+1:]
	if len(cmds) < 2 || len(cmds) > 3 || !strings.HasPrefix(strings.TrimSpace(last), "swarm-proxy proxy") {
		t.Errorf("proxy --help ends with %d example command lines, last line %q:\n%s", len(cmds), last, out[examples:])
	}
}
