package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the command line and returns stdout and the error.
func runAgentCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), err
}

// TestEnvWithTicket writes a ticket with "ticket --json" and checks that "env --ticket" puts its
// credentials, percent-encoded, in the proxy URLs, and that --proxy overrides its broker address.
func TestEnvWithTicket(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s", 40)), 0o600); err != nil {
		t.Fatal(err)
	}
	tk, err := runAgentCmd(t, "ticket", "--json", "--session", "job-7", "--broker", "broker.internal:8080", "--secret-file", secret)
	if err != nil {
		t.Fatalf("ticket: %v", err)
	}
	tkFile := filepath.Join(dir, "ticket.json")
	if err := os.WriteFile(tkFile, []byte(tk), 0o600); err != nil {
		t.Fatal(err)
	}
	var ticket struct{ Token string }
	if err := json.Unmarshal([]byte(tk), &ticket); err != nil || ticket.Token == "" {
		t.Fatalf("ticket output %q: %v", tk, err)
	}
	tests := []struct {
		name     string
		args     []string
		wantHost string
	}{
		{"broker address from the ticket", nil, "broker.internal:8080"},
		{"--proxy overrides it", []string{"--proxy", "http://10.0.0.2:3128"}, "10.0.0.2:3128"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runAgentCmd(t, append([]string{"env", "--ticket", tkFile, "--format", "json"}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			var vars map[string]string
			if err := json.Unmarshal([]byte(out), &vars); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, name := range []string{"HTTP_PROXY", "https_proxy"} {
				u, err := url.Parse(vars[name])
				if err != nil {
					t.Fatal(err)
				}
				pass, _ := u.User.Password()
				if u.Host != tt.wantHost || u.User.Username() != "job-7" || pass != ticket.Token {
					t.Errorf("%s = %s, want job-7:TOKEN@%s", name, vars[name], tt.wantHost)
				}
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"stray argument", []string{"env", "x"}},
		{"bad format", []string{"env", "--format", "xml"}},
		{"missing ticket", []string{"env", "--ticket", filepath.Join(t.TempDir(), "none.json")}},
		{"bad proxy", []string{"env", "--proxy", "ftp://x:1"}},
		{"firewall without proxy", []string{"firewall"}},
		{"firewall bad dns", []string{"firewall", "--proxy", "127.0.0.1:8080", "--dns", "resolver"}},
		{"doctor bad expect", []string{"doctor", "--expect", "maybe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if out, err := runAgentCmd(t, tt.args...); err == nil {
				t.Fatalf("%v succeeded:\n%s", tt.args, out)
			}
		})
	}
}

func TestHealth(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Write([]byte("ok\n"))
			return
		}
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	// The health check must not go through a proxy from the environment.
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:1")
	t.Setenv("http_proxy", "http://127.0.0.1:1")
	tests := []struct {
		path string
		ok   bool
	}{
		{"/healthz", true},
		{"/readyz", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			out, err := runAgentCmd(t, "health", "--url", srv.URL+tt.path, "--timeout", "5s")
			if (err == nil) != tt.ok {
				t.Fatalf("health %s: err=%v out=%q, want ok=%v", tt.path, err, out, tt.ok)
			}
			if tt.ok && !strings.Contains(out, ": ok") {
				t.Errorf("output %q", out)
			}
		})
	}
}

func TestFirewallPrints(t *testing.T) {
	out, err := runAgentCmd(t, "firewall", "--proxy", "127.0.0.1:8080", "--dns", "10.0.0.53", "--format", "nftables")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ip daddr 127.0.0.1 tcp dport 8080 accept", "ip daddr 10.0.0.53 udp dport 53 accept"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
