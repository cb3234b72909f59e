package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
)

func TestPolicyExplainRequest(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(`mode: enforce
allow:
  - host: api.github.com
    name: github
    ports: [443]
    http:
      - methods: [GET, HEAD]
        paths: ["/repos/myorg/**"]
  - host: pypi.org
    access: read-only
  - host: example.org
`), 0o644); err != nil {
		t.Fatal(err)
	}
	squeeze := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"api.github.com"}, []string{"decision allow", "inspect yes: HTTPS is terminated and each request must match one of:",
			`{methods: [GET, HEAD], paths: ["/repos/myorg/**"]}`}},
		{[]string{"api.github.com", "GET", "/repos/myorg/tool?ref=main"}, []string{"request GET /repos/myorg/tool decision",
			"decision allow (the rule inspects: this request is allowed by its http entries)"}},
		{[]string{"api.github.com", "DELETE", "/repos/myorg/tool"}, []string{"decision deny (http_rule_not_matched)",
			"reason DELETE /repos/myorg/tool is not allowed by rule github", `fix to allow it, add to the http list of rule github in ` + pol + `: - {methods: [DELETE], paths: ["/repos/myorg/tool"]}`}},
		{[]string{"api.github.com", "GET", "/repos/myorg/%2e%2e/other"}, []string{"decision deny (ambiguous_path)", "it has an encoded . (%2E)"}},
		{[]string{"pypi.org", "POST", "/legacy/"}, []string{"decision deny (http_rule_not_matched)", "{methods: [GET, HEAD, OPTIONS], paths: [\"/**\"]}"}},
		{[]string{"example.org", "DELETE", "/a/../b"}, []string{"decision allow (the rule does not inspect: every request to the host is allowed)"}},
		{[]string{"other.example", "GET", "/"}, []string{"decision deny", "none (no_rule_matched)"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			r := runCLI(t, "", append([]string{"policy", "explain", pol}, c.args...)...)
			if r.err != nil {
				t.Fatal(r.err)
			}
			for _, w := range c.want {
				if !strings.Contains(squeeze(r.stdout)+" ", squeeze(w)) {
					t.Errorf("output lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
	if r := runCLI(t, "", "policy", "explain", pol, "api.github.com", "GET"); r.err == nil || !strings.Contains(r.err.Error(), "METHOD needs a PATH") {
		t.Errorf("explain with METHOD alone: %v", r.err)
	}
}

func TestCAInitAndBundle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	r := runCLI(t, "", "ca", "init", "--dir", dir)
	if r.err != nil {
		t.Fatal(r.err)
	}
	ca, err := inspect.LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"wrote " + filepath.Join(dir, "ca.pem") + " (certificate) and " + filepath.Join(dir, "ca-key.pem") + " (private key, mode 0600)",
		"SHA-256 fingerprint: " + ca.Fingerprint() + "\n", "subject: swarm-proxy inspection CA on "} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("ca init output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := runCLI(t, "", "ca", "init", "--dir", dir); r.err == nil || !strings.Contains(r.err.Error(), "refusing to overwrite") {
		t.Errorf("second ca init: %v", r.err)
	}
	if r := runCLI(t, "", "ca", "init"); r.err == nil || !strings.Contains(r.err.Error(), "--dir is required") {
		t.Errorf("ca init without --dir: %v", r.err)
	}

	// The bundle: some roots, then the CA.
	other := filepath.Join(t.TempDir(), "other")
	if r := runCLI(t, "", "ca", "init", "--dir", other); r.err != nil {
		t.Fatal(r.err)
	}
	out := filepath.Join(t.TempDir(), "bundle.pem")
	r = runCLI(t, "", "ca", "bundle", "--ca", filepath.Join(dir, "ca.pem"), "--out", out, "--roots", filepath.Join(other, "ca.pem"))
	if r.err != nil {
		t.Fatal(r.err)
	}
	b, _ := os.ReadFile(out)
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	otherPEM, _ := os.ReadFile(filepath.Join(other, "ca.pem"))
	if !strings.HasPrefix(string(b), string(otherPEM)) || !strings.HasSuffix(string(b), string(caPEM)) {
		t.Errorf("bundle is not the roots followed by the CA:\n%s", b)
	}
	if r := runCLI(t, "", "ca", "bundle", "--out", out); r.err == nil || !strings.Contains(r.err.Error(), "--ca is required") {
		t.Errorf("bundle without --ca: %v", r.err)
	}
}

func TestEnvCA(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "", "env", "--ca", ca)
	if r.err != nil {
		t.Fatal(r.err)
	}
	bundle := filepath.Join(dir, "ca-bundle.pem")
	for _, want := range []string{"export SSL_CERT_FILE='" + bundle + "'\n", "export GIT_SSL_CAINFO='" + bundle + "'\n",
		"export CARGO_HTTP_CAINFO='" + bundle + "'\n", "export NODE_EXTRA_CA_CERTS='" + ca + "'\n", "export HTTPS_PROXY="} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("env --ca lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "swarm-proxy ca bundle --ca "+ca+" --out "+bundle) {
		t.Errorf("no note about the missing bundle: %q", r.stderr)
	}

	r = runCLI(t, "", "env", "--ca", "certs/ca.pem", "--format", "dockerfile")
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, want := range []string{`COPY ["certs/ca.pem", "/usr/local/share/ca-certificates/swarm-proxy.crt"]` + "\nRUN update-ca-certificates\n",
		`ENV SSL_CERT_FILE="/etc/ssl/certs/ca-certificates.crt"`, `ENV NODE_EXTRA_CA_CERTS="/usr/local/share/ca-certificates/swarm-proxy.crt"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dockerfile output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Index(r.stdout, "RUN update-ca-certificates") > strings.Index(r.stdout, "ENV ") {
		t.Error("the CA must be installed before the ENV lines")
	}
	if r := runCLI(t, "", "env", "--ca", "ca.pem", "--format", "compose"); r.err == nil || !strings.Contains(r.err.Error(), "absolute") {
		t.Errorf("compose with a relative --ca: %v", r.err)
	}
	if r := runCLI(t, "", "env", "--ca", filepath.Join(dir, "missing.pem")); r.err == nil {
		t.Error("sh with a missing --ca succeeded")
	}
}
