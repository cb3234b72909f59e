package deploy_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

// TestSecretsExample: the secrets example holds no value, and every secret the secrets policy names
// is defined there.
func TestSecretsExample(t *testing.T) {
	data, err := os.ReadFile("secrets.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := secrets.Parse("secrets.example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, s := range f.Specs {
		if s.Value != nil || s.Env == "" {
			t.Errorf("secret %s: the example takes values from the proxy's environment only", s.Name)
		}
		defined[s.Name] = true
	}
	p, err := policy.Load("policy.secrets.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range p.Allow {
		for _, name := range r.Secrets {
			n++
			if !defined[name] {
				t.Errorf("rule %s names secret %q, which secrets.example.yaml does not define", r.ID(), name)
			}
		}
	}
	if n == 0 {
		t.Error("policy.secrets.yaml binds no secret")
	}
}

// TestComposeSecrets merges compose.yaml and compose.secrets.yaml with docker-compose and checks that
// the proxy gets the values from the host's environment and the secrets flags, and that the agent
// gets exactly what "swarm-proxy env --ca --secrets" prints (placeholders, never a value) and neither
// the CA's key nor the secrets file.
func TestComposeSecrets(t *testing.T) {
	dc := requireTool(t, "docker-compose", "docker-compose")
	config := func(env ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, dc, "-f", "compose.yaml", "-f", "compose.secrets.yaml", "config")
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "DOCKER_HOST=unix:///nonexistent.sock"}, env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err != nil {
			return errb.Bytes(), err
		}
		return out.Bytes(), nil
	}
	if out, err := config(); err == nil || !strings.Contains(string(out), "export GITHUB_TOKEN in the shell that runs compose") {
		t.Errorf("without GITHUB_TOKEN on the host, config: err=%v\n%s", err, out)
	}
	const ghValue, llmValue = "ghp_HOSTVALUE", "sk-ant-HOSTVALUE"
	out, err := config("GITHUB_TOKEN="+ghValue, "ANTHROPIC_API_KEY="+llmValue)
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	var merged struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Volumes     []string          `yaml:"volumes"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &merged); err != nil {
		t.Fatal(err)
	}
	base := loadCompose(t)
	proxy, agent := merged.Services["proxy"], merged.Services["agent"]
	if want := base.Services["proxy"].Command; !slices.Equal(proxy.Command[:len(want)], want) {
		t.Errorf("proxy command %q does not start with compose.yaml's %q", proxy.Command, want)
	}
	for _, flag := range []string{"--secrets", "--ca-cert", "--ca-key"} {
		if !slices.Contains(proxy.Command, flag) {
			t.Errorf("proxy command %q lacks %s", proxy.Command, flag)
		}
	}
	if proxy.Environment["GITHUB_TOKEN"] != ghValue || proxy.Environment["ANTHROPIC_API_KEY"] != llmValue {
		t.Errorf("proxy environment %v: the values come from the host's", proxy.Environment)
	}

	secretsCopy := filepath.Join(t.TempDir(), "secrets.yaml")
	data, _ := os.ReadFile("secrets.example.yaml")
	if err := os.WriteFile(secretsCopy, data, 0o600); err != nil {
		t.Fatal(err)
	}
	checkAgentEnv(t, agent.Environment, "--proxy", "http://proxy:8080", "--ca", "/etc/swarm-proxy/ca/ca.pem", "--secrets", secretsCopy)
	if s := string(out); strings.Count(s, ghValue) != 1 || strings.Count(s, llmValue) != 1 {
		t.Errorf("a value appears outside the proxy's environment:\n%s", s)
	}
	for _, v := range agent.Volumes {
		if strings.Contains(v, "ca-key.pem") || strings.Contains(v, "secrets.yaml") || strings.HasSuffix(strings.Split(v, ":")[0], "/ca") {
			t.Errorf("agent volume %q: the CA's key and the secrets stay with the proxy", v)
		}
	}
}
