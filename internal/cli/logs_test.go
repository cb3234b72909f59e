package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/logstats"
)

// TestLogsUntilDate: a date given to --until includes that whole day (the fixture's records are all
// on 2026-11-24, from 10:00:00Z to 10:00:21Z).
func TestLogsUntilDate(t *testing.T) {
	for _, c := range []struct {
		name  string
		args  []string
		hosts int
	}{
		{"until the same day", []string{"--until", "2026-11-24"}, 20},
		{"since and until the same day", []string{"--since", "2026-11-24", "--until", "2026-11-24"}, 20},
		{"until the day before", []string{"--until", "2026-11-23"}, 0},
		{"since the day after", []string{"--since", "2026-11-25"}, 0},
		{"until a time stays inclusive", []string{"--until", "2026-11-24T10:00:00Z"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, "", append(append([]string{"logs", "domains", "--json"}, c.args...), fixtureCurrent)...)
			if r.err != nil {
				t.Fatal(r.err)
			}
			var rep logstats.DomainReport
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Hosts) != c.hosts {
				t.Errorf("%d hosts, want %d:\n%s", len(rep.Hosts), c.hosts, r.stdout)
			}
		})
	}
}

// TestLogsNotAnAccessLog: a file in which no line is a record (a policy, a text file) is an error
// naming it, not an empty report; an empty log is an empty report.
func TestLogsNotAnAccessLog(t *testing.T) {
	dir := t.TempDir()
	notLog := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(notLog, []byte("\nmode: enforce\nallow:\n  - host: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "access.log")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	want := notLog + " is not a swarm-proxy access log: none of its 3 lines is an access-log record (line 2: not a JSON access-log record: does not start with {)"
	for _, args := range [][]string{{"logs", "domains", notLog}, {"logs", "domains", empty, notLog}, {"policy", "generate", notLog}} {
		r := runCLI(t, "", args...)
		if r.err == nil || ExitCode(r.err) != 1 || !strings.Contains(r.err.Error(), want) || r.stdout != "" {
			t.Errorf("%q: exit %d, error %v, stdout %q", args, ExitCode(r.err), r.err, r.stdout)
		}
	}
	if r := runCLI(t, "not json\n", "logs", "domains"); r.err == nil || !strings.Contains(r.err.Error(), "stdin is not a swarm-proxy access log") {
		t.Errorf("stdin: %v", r.err)
	}
	if r := runCLI(t, "", "logs", "domains", empty); r.err != nil || !strings.Contains(r.stdout, "0 hosts, 0 requests") {
		t.Errorf("empty log: %v\n%s", r.err, r.stdout)
	}
}
