package cli

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

// TestEnvSecrets checks that "env --secrets" gives the agent each placeholder_env set to its
// placeholder, without reading the values (the variables they come from are unset here), and refuses
// a file that others may read.
func TestEnvSecrets(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(file, []byte(`github:
  value_from: {env: SWARM_TEST_UNSET_TOKEN}
  placeholder_env: GITHUB_TOKEN
anthropic:
  value_from: {file: /nonexistent/anthropic}
  placeholder_env: ANTHROPIC_API_KEY
inject-only:
  value: "sk-TESTVALUE"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runAgentCmd(t, "env", "--secrets", file, "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var vars map[string]string
	if err := json.Unmarshal([]byte(out), &vars); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if vars["GITHUB_TOKEN"] != "swarm-proxy-secret:github" || vars["ANTHROPIC_API_KEY"] != "swarm-proxy-secret:anthropic" || vars["HTTP_PROXY"] == "" {
		t.Errorf("vars = %v", vars)
	}
	if strings.Contains(out, "TESTVALUE") || strings.Contains(out, "inject-only") {
		t.Errorf("output has a value or a secret without placeholder_env:\n%s", out)
	}
	sh, err := runAgentCmd(t, "env", "--secrets", file)
	if err != nil || !strings.Contains(sh, "export GITHUB_TOKEN='swarm-proxy-secret:github'\n") {
		t.Errorf("sh output %q, %v", sh, err)
	}

	os.Chmod(file, 0o644)
	if _, err := runAgentCmd(t, "env", "--secrets", file); err == nil || !strings.Contains(err.Error(), "chmod 600 "+file) {
		t.Errorf("mode 0644: err = %v", err)
	}
	clash := filepath.Join(dir, "clash.yaml")
	os.WriteFile(clash, []byte("a:\n  value: x\n  placeholder_env: HTTPS_PROXY\n"), 0o600)
	if _, err := runAgentCmd(t, "env", "--secrets", clash); err == nil || !strings.Contains(err.Error(), "placeholder_env HTTPS_PROXY of secret \"a\" is a variable that env sets itself") {
		t.Errorf("clash: err = %v", err)
	}
}

// TestPolicyCheckSecrets: "policy check --secrets" names each secret a rule uses that the secrets
// file does not define, with the rule's line.
func TestPolicyCheckSecrets(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte("mode: enforce\nallow:\n  - host: api.github.com\n    secrets: [github]\n  - host: api.example.com\n    secrets: [github, nope]\n"), 0o644)
	sec := filepath.Join(dir, "secrets.yaml")
	os.WriteFile(sec, []byte("github:\n  value_from: {env: UNSET_IN_TEST}\n"), 0o600)
	if out, err := runAgentCmd(t, "policy", "check", pol); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("without --secrets: %q, %v", out, err)
	}
	_, err := runAgentCmd(t, "policy", "check", pol, "--secrets", sec)
	if want := pol + `:5: allow#2: secret "nope" is not defined in ` + sec; err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "allow#1") {
		t.Errorf("err = %v, want %q", err, want)
	}
}

// TestPolicyExplainSecrets: "policy explain" names the secrets a rule lets through and the headers it
// injects, as written (never a value).
func TestPolicyExplainSecrets(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("mode: enforce\nallow:\n  - host: api.github.com\n    inject: [{header: authorization, value: \"Bearer {{secret:github}}\"}]\n    secrets: [github]\n"), 0o644)
	out, err := runAgentCmd(t, "policy", "explain", pol, "api.github.com:443")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"secrets   github: their placeholders are replaced", "inject    Authorization: Bearer {{secret:github}}"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
}

// TestWatchSecretsWaitsForTheWholeFile rewrites the secrets file in place in two steps, as an editor
// or a shell redirect does: the first half parses on its own but lacks a secret. The reload must take
// only the finished file, never the half (before ReadSettled it was taken at the next poll).
func TestWatchSecretsWaitsForTheWholeFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secrets.yaml")
	first := "one:\n  value: \"v1\"\n"
	whole := first + "two:\n  value: \"v2\"\n"
	if err := os.WriteFile(file, []byte(first), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(file, old, old)
	set, err := secrets.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	h := secrets.NewHolder(set)
	var logs loopbacktest.LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchSecrets(ctx, file, 10*time.Millisecond, h, policy.NewHolder(&policy.Policy{}), logger)
	}()
	defer func() { cancel(); <-done }()

	// The rewrite: truncate and write a first part with no "two" (it parses, with one secret), then
	// the rest 100 ms later, well within the 250 ms a file must stay unchanged.
	if err := os.WriteFile(file, []byte("three:\n  value: \"v3\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the writer's pause, which the reload must not fall into
	if err := os.WriteFile(file, []byte(whole), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.Load().Lookup("two") == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the finished file was not loaded within 10 s; log:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(logs.String(), "secrets=1 ") {
		t.Errorf("a reload took the half-written file (one secret):\n%s", logs.String())
	}
}

// TestPolicyCheckNotesSecretsOnEveryPort: policy check points at a rule that binds secrets on every
// port, whose plain-HTTP requests the proxy refuses with secret_cleartext, and not at one with ports.
func TestPolicyCheckNotesSecretsOnEveryPort(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("mode: enforce\nallow:\n  - host: api.github.com\n    secrets: [github]\n  - host: api.example.com\n    ports: [443]\n    secrets: [example]\n"), 0o644)
	r := runCLI(t, "", "policy", "check", pol)
	want := "note: " + pol + ":3: allow#1 puts secrets in requests on every port; plain http:// requests through it are refused (secret_cleartext): give it ports: [443]"
	if r.err != nil || !strings.Contains(r.stdout, ": ok") || !strings.Contains(r.stderr, want) || strings.Contains(r.stderr, "allow#2") {
		t.Errorf("policy check: %v\nstdout %q\nstderr %q\nwant %q", r.err, r.stdout, r.stderr, want)
	}
}
