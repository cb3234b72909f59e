package cli

import (
	"encoding/json"
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
