// Package scripts holds the tests of the shell scripts next to them.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakes stand in for the commands install-packages.sh runs. Each appends what it was asked to
// $LOG; $STATE/UNIT exists while a unit is active; apt-get install starts the units listed in
// $STARTS ("pkg=unit ..."), as Debian's maintainer scripts do.
var fakes = map[string]string{
	"id":   `echo "$FAKE_UID"`,
	"sudo": `echo "sudo $*" >> "$LOG"; exec "$@"`,
	"apt-get": `echo "apt-get $*" >> "$LOG"
[ "$1" = install ] || exit 0
for arg in "$@"; do for s in $STARTS; do [ "${s%%=*}" = "$arg" ] && touch "$STATE/${s#*=}"; done; done; exit 0`,
	"systemctl": `case "$1" in
show-environment) [ "$FAKE_SYSTEMD" = yes ] ;;
is-active) [ -e "$STATE/$3" ] ;;
stop) echo "systemctl stop $2" >> "$LOG"; rm -f "$STATE/$2" ;;
*) echo "systemctl $*" >> "$LOG"; exit 1 ;;
esac`,
	// Anything that kills by name must never run.
	"pkill":   `echo "pkill $*" >> "$LOG"`,
	"killall": `echo "killall $*" >> "$LOG"`,
}

// TestInstallStopsOnlyWhatItStarted: the install step stops a service only when its own apt-get
// install started it; a unit that ran before, anything without systemd, and anything by name are
// left alone.
func TestInstallStopsOnlyWhatItStarted(t *testing.T) {
	tests := []struct {
		name     string
		uid      string
		systemd  string
		active   []string // units running before the install
		packages []string
		starts   string
		wantLog  []string // exactly these lines, in order
		wantOut  []string
	}{
		{
			name: "root with systemd", uid: "0", systemd: "yes", active: []string{"ssh.service"},
			packages: []string{"curl", "openssh-server", "squid"}, starts: "openssh-server=ssh.service openssh-server=ssh.socket squid=squid.service",
			wantLog: []string{"apt-get update -qq", "apt-get install -y -qq --no-install-recommends curl openssh-server squid",
				"systemctl stop ssh.socket", "systemctl stop squid.service"},
			wantOut: []string{"installing: curl openssh-server squid",
				"stopping ssh.socket: this run's apt-get install started it", "stopping squid.service: this run's apt-get install started it"},
		},
		{
			name: "user with sudo", uid: "1000", systemd: "yes",
			packages: []string{"tinyproxy"}, starts: "tinyproxy=tinyproxy.service",
			wantLog: []string{"sudo apt-get update -qq", "apt-get update -qq", "sudo apt-get install -y -qq --no-install-recommends tinyproxy",
				"apt-get install -y -qq --no-install-recommends tinyproxy", "sudo systemctl stop tinyproxy.service", "systemctl stop tinyproxy.service"},
		},
		{
			name: "container without systemd", uid: "0", systemd: "no",
			packages: []string{"openssh-server"}, starts: "openssh-server=ssh.service",
			wantLog: []string{"apt-get update -qq", "apt-get install -y -qq --no-install-recommends openssh-server"},
		},
		{
			name: "service already running", uid: "0", systemd: "yes", active: []string{"squid.service"},
			packages: []string{"squid"}, starts: "squid=squid.service",
			wantLog: []string{"apt-get update -qq", "apt-get install -y -qq --no-install-recommends squid"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin, state := t.TempDir(), t.TempDir()
			for name, body := range fakes {
				if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, u := range tt.active {
				if err := os.WriteFile(filepath.Join(state, u), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			logFile := filepath.Join(t.TempDir(), "log")
			cmd := exec.Command("./install-packages.sh", tt.packages...)
			cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "LOG=" + logFile, "STATE=" + state, "STARTS=" + tt.starts,
				"FAKE_UID=" + tt.uid, "FAKE_SYSTEMD=" + tt.systemd}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("install-packages.sh: %v\n%s", err, out)
			}
			data, _ := os.ReadFile(logFile)
			if got := strings.Split(strings.TrimSpace(string(data)), "\n"); strings.Join(got, "\n") != strings.Join(tt.wantLog, "\n") {
				t.Errorf("commands run:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.wantLog, "\n"))
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, u := range tt.active {
				if _, err := os.Stat(filepath.Join(state, u)); err != nil {
					t.Errorf("%s was running before the install and was stopped", u)
				}
			}
		})
	}
}

// TestScriptsKillNothingByName: no script stops services or kills processes by name; only
// install-packages.sh stops a unit, the one its own install started.
func TestScriptsKillNothingByName(t *testing.T) {
	scripts, err := filepath.Glob("*.sh")
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	ci, err := os.ReadFile("../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(scripts, "../.ci/run") {
		data, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"pkill", "killall", "kill -"} {
			if strings.Contains(string(data), bad) {
				t.Errorf("%s runs %q", s, bad)
			}
		}
		if s != "install-packages.sh" && strings.Contains(string(data), "systemctl") {
			t.Errorf("%s runs systemctl", s)
		}
	}
	if !strings.Contains(string(ci), "exec ./scripts/test.sh\n") {
		t.Errorf(".ci/run does not run the README's test command:\n%s", ci)
	}
}
