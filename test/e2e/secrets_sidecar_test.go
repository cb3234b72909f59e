package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// secretsSidecarUID is the proxy image's user (deploy/Dockerfile: USER 65532).
const secretsSidecarUID = 65532

// composeSecrets reads the proxy's command and environment from deploy/compose.secrets.yaml.
func composeSecrets(t *testing.T) (command []string, envNames []string) {
	t.Helper()
	data, err := os.ReadFile("../../deploy/compose.secrets.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	p := c.Services["proxy"]
	for k := range p.Environment {
		envNames = append(envNames, k)
	}
	slices.Sort(envNames)
	return p.Command, envNames
}

// chownAll hands paths to the sidecar's user, as the walkthrough's install and chown do.
func chownAll(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.Chown(p, secretsSidecarUID, secretsSidecarUID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNetnsSecretsSidecar runs the walkthrough of docs/secrets.md with network namespaces instead
// of containers: the proxy command and environment of deploy/compose.secrets.yaml, as uid 65532 with
// the secrets file and CA key installed as the walkthrough installs them, the example secrets file
// and policy (plus a cidr rule for the test's target addresses), the agent's environment from
// "swarm-proxy env --ca --secrets". api.github.com and api.anthropic.com are a recording HTTPS server
// in the target namespace, known to the proxy through its namespace's /etc/hosts.
func TestNetnsSecretsSidecar(t *testing.T) {
	requireCaptureTools(t)
	n := newNetnsTopology(t)
	etc := filepath.Join("/etc/netns", n.proxy)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	hosts := fmt.Sprintf("%s api.github.com api.anthropic.com github.com\n", nsTargetIP)
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, certPEM := selfSigned(t, "api.github.com", "api.anthropic.com")
	var ln net.Listener
	inNetns(t, n.target, func() {
		var err error
		if ln, err = net.Listen("tcp", nsTargetIP+":443"); err != nil {
			t.Fatal(err)
		}
	})
	up := newRecorderOn(t, ln, &cert)

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	upstreamCA := filepath.Join(dir, "upstream.pem")
	os.WriteFile(upstreamCA, certPEM, 0o644)
	// The walkthrough: ca init, ca bundle, install the secrets file and hand the CA key to uid 65532.
	_, caDir := inspectionCADir(t)
	os.Chmod(caDir, 0o755)
	caArgs := agentCAArgs(t, caDir)
	secretsFile := filepath.Join(dir, "secrets.yaml")
	example, err := os.ReadFile("../../deploy/secrets.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writePrivate(t, secretsFile, string(example))
	chownAll(t, secretsFile, filepath.Join(caDir, "ca-key.pem"))
	logDir := filepath.Join(dir, "log")
	os.Mkdir(logDir, 0o755)
	chownAll(t, logDir)

	// The example policy, plus the cidr rule that lets the proxy dial the test's private target.
	var pol map[string]any
	data, err := os.ReadFile("../../deploy/policy.secrets.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &pol); err != nil {
		t.Fatal(err)
	}
	pol["allow"] = append(pol["allow"].([]any), map[string]any{"name": "e2e-target", "cidr": nsAllowedCIDR, "ports": []int{443}})
	polData, _ := yaml.Marshal(pol)
	policyFile := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policyFile, polData, 0o644)

	command, envNames := composeSecrets(t)
	args := slices.Clone(command)
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--policy":
			args[i+1] = policyFile
		case "--log-file":
			args[i+1] = filepath.Join(logDir, "access.log")
		case "--secrets":
			args[i+1] = secretsFile
		case "--ca-cert":
			args[i+1] = filepath.Join(caDir, "ca.pem")
		case "--ca-key":
			args[i+1] = filepath.Join(caDir, "ca-key.pem")
		}
	}
	args = append(args, "--upstream-ca", upstreamCA) // the test's target is not in the system roots
	values := map[string]string{}
	var proxyEnv []string
	for _, name := range envNames {
		values[name] = secretValue(t, strings.ToLower(name)+"-")
		proxyEnv = append(proxyEnv, name+"="+values[name])
	}
	if values["GITHUB_TOKEN"] == "" || values["ANTHROPIC_API_KEY"] == "" {
		t.Fatalf("compose.secrets.yaml gives the proxy %v; want GITHUB_TOKEN and ANTHROPIC_API_KEY", envNames)
	}
	all := []string{values["GITHUB_TOKEN"], values["ANTHROPIC_API_KEY"]}
	proxyStderr := startProxyAsEnv(t, n.proxy, secretsSidecarUID, proxyEnv, "proxy listening", args...)

	proxyURL := "http://" + net.JoinHostPort(nsProxyIP, nsProxyPort)
	env := agentEnvArgs(t, append(caArgs, "--proxy", proxyURL, "--secrets", secretsFile), all...)
	agent := func(script string) Result {
		t.Helper()
		r := Run(t, env, "ip", "netns", "exec", n.agent, "sh", "-c", script)
		noValue(t, "what the agent received", r.Stdout+r.Stderr, all...)
		return r
	}

	r := agent(`env; curl -sS -D - -H "Authorization: token $GITHUB_TOKEN" https://api.github.com/repos/o/r`)
	if !strings.Contains(r.Stdout, "GITHUB_TOKEN=swarm-proxy-secret:github") || !strings.Contains(r.Stdout, "x-echo-authorization: [redacted]") {
		t.Fatalf("agent: %+v", r)
	}
	if seen := up.requests(); len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+values["GITHUB_TOKEN"] {
		t.Fatalf("api.github.com saw %+v", seen)
	}
	r = agent(`curl -sS -D - -X POST -H "x-api-key: $ANTHROPIC_API_KEY" -d '{}' https://api.anthropic.com/v1/messages`)
	if seen := up.requests(); !strings.Contains(r.Stdout, "200") || len(seen) != 2 || seen[1].Header.Get("X-Api-Key") != values["ANTHROPIC_API_KEY"] {
		t.Fatalf("api.anthropic.com: %+v; saw %+v", r, seen)
	}
	// The token steered to the other API, and a write with the read-only token: refused, nothing sent.
	r = agent(`curl -sS -D - -X POST -H "x-api-key: $GITHUB_TOKEN" https://api.anthropic.com/v1/messages`)
	if !strings.Contains(r.Stdout, "code=secret_not_bound") {
		t.Errorf("the GitHub token to api.anthropic.com: %+v", r)
	}
	r = agent(`curl -sS -D - -X POST https://api.github.com/user/repos`)
	if !strings.Contains(r.Stdout, "403") {
		t.Errorf("a POST with the read-only rule: %+v", r)
	}
	if n := len(up.requests()); n != 2 {
		t.Errorf("the upstream received %d requests, want the 2 allowed ones", n)
	}

	logFile := filepath.Join(logDir, "access.log")
	rec := waitLog(t, logFile, "the github request", func(r accesslog.Record) bool { return r.Path == "/repos/o/r" })
	if !slices.Equal(rec.Secrets, []string{"github"}) || !rec.Inspected {
		t.Errorf("record %+v", rec)
	}
	logData, _ := os.ReadFile(logFile)
	noValue(t, "the access log", string(logData), all...)
	noValue(t, "the proxy's stderr", proxyStderr(), all...)
}

// newRecorderOn is newRecorder serving on ln.
func newRecorderOn(t *testing.T, ln net.Listener, cert *tls.Certificate) *recorder {
	t.Helper()
	rec := newUnstartedRecorder(t)
	rec.srv.Listener.Close()
	rec.srv.Listener = ln
	rec.start(cert)
	return rec
}
