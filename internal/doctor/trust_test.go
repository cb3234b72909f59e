package doctor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
)

func TestCheckTrust(t *testing.T) {
	dir := t.TempDir()
	if _, err := inspect.CreateCA(dir, "doctor", time.Now()); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, inspect.CertFile)
	caPEM, _ := os.ReadFile(ca)
	other := t.TempDir()
	inspect.CreateCA(other, "other", time.Now())
	otherPEM, _ := os.ReadFile(filepath.Join(other, inspect.CertFile))
	bundle := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundle, append(append([]byte{}, otherPEM...), caPEM...), 0o644)
	without := filepath.Join(dir, "without.pem")
	os.WriteFile(without, otherPEM, 0o644)

	run := func(vars map[string]string, cfgCA string) map[string]Result {
		c := Config{CA: cfgCA, LookupEnv: envOf(vars), Timeout: time.Second,
			LookPath: func(string) (string, error) { return "/usr/bin/x", nil },
			Output: func(_ context.Context, name string, args ...string) (string, error) {
				if name == "python3" {
					return without + "\n", nil // certifi's bundle, without the CA
				}
				return "", exec.ErrNotFound
			}}
		c.defaults()
		out := map[string]Result{}
		checkTrust(context.Background(), c, func(k string) string { v, _ := c.LookupEnv(k); return v }, func(r Result) { out[r.Check] = r })
		return out
	}
	// What env --ca sets: every tool trusts the CA.
	good := run(map[string]string{"CURL_CA_BUNDLE": bundle, "REQUESTS_CA_BUNDLE": bundle, "GIT_SSL_CAINFO": bundle, "NODE_EXTRA_CA_CERTS": ca}, "")
	for _, tool := range []string{"curl", "python3", "node", "git"} {
		if r := good["trust "+tool]; r.Status != OK {
			t.Errorf("%s: %v", tool, r)
		}
	}
	// Nothing set: each failure names its variable.
	bad := run(map[string]string{}, ca)
	for tool, variable := range map[string]string{"curl": "CURL_CA_BUNDLE", "python3": "REQUESTS_CA_BUNDLE", "node": "NODE_EXTRA_CA_CERTS", "git": "GIT_SSL_CAINFO"} {
		r := bad["trust "+tool]
		if r.Status != Fail || !strings.Contains(r.Fix, variable) {
			t.Errorf("%s: %v, want a failure naming %s", tool, r, variable)
		}
	}
	if r := bad["trust python3"]; !strings.Contains(r.Message, "certifi") {
		t.Errorf("python3 without REQUESTS_CA_BUNDLE should name certifi's bundle: %v", r)
	}
	// A bundle without the CA fails too.
	if r := run(map[string]string{"CURL_CA_BUNDLE": without}, ca)["trust curl"]; r.Status != Fail || !strings.Contains(r.Message, "does not hold the inspection CA") {
		t.Errorf("curl with a bundle lacking the CA: %v", r)
	}
	// No CA known: no trust check at all.
	if out := run(map[string]string{}, ""); len(out) != 0 {
		t.Errorf("trust checks without a CA: %v", out)
	}
}
