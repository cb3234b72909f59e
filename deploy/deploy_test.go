// Package deploy_test checks the files in deploy/ without a Docker engine: the Dockerfile with a
// small reader of its own and the lint rules "docker build --check" applies while parsing (hadolint
// is no Debian package, so the suite cannot count on it), compose.yaml with Debian's docker-compose ("config" validates
// against the compose schema and needs no engine), the example policy with the policy loader, and
// the invariants between them (same proxy command, same agent environment as "swarm-proxy env").
package deploy_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/publicsuffix"
	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/agentenv"
	"github.com/swarm-proxy/swarm-proxy/internal/cli"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// compose is the part of compose.yaml the invariants look at.
type compose struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Command     []string          `yaml:"command"`
		Networks    []string          `yaml:"networks"`
		Volumes     []string          `yaml:"volumes"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		DependsOn map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		CapDrop     []string `yaml:"cap_drop"`
		CapAdd      []string `yaml:"cap_add"`
		SecurityOpt []string `yaml:"security_opt"`
	} `yaml:"services"`
	Networks map[string]struct {
		Internal bool `yaml:"internal"`
	} `yaml:"networks"`
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

func TestDockerfile(t *testing.T) {
	src, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages, warnings := parseDockerfile(t, string(src))
	for _, w := range warnings {
		t.Errorf("lint: %s", w)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	var static bool
	for _, in := range stages[0].instrs {
		if in.cmd == "RUN" && strings.Contains(in.raw, "CGO_ENABLED=0 go build") {
			static = true
		}
	}
	if !static {
		t.Error("the build stage does not build with CGO_ENABLED=0")
	}
	final := stages[len(stages)-1]
	if final.base != "scratch" && !strings.HasPrefix(final.base, "gcr.io/distroless/static") {
		t.Errorf("final stage is FROM %s, want scratch or distroless/static", final.base)
	}
	var user string
	var health, entrypoint, command []string
	for _, in := range final.instrs {
		switch in.cmd {
		case "USER":
			user = in.raw
		case "HEALTHCHECK":
			health = in.healthTest()
		case "ENTRYPOINT":
			if in.exec == nil {
				t.Error("ENTRYPOINT in shell form: the image has no shell")
			}
			entrypoint = in.exec
		case "CMD":
			command = in.exec
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("USER %q, want a non-root user", user)
	}
	if len(health) < 3 || health[0] != "CMD" || !slices.Contains(health, "health") {
		t.Errorf("HEALTHCHECK %q, want CMD [swarm-proxy health ...] (the image has no shell or curl)", health)
	}
	c := loadCompose(t)
	if got, want := command, c.Services["proxy"].Command; !slices.Equal(got, want) {
		t.Errorf("Dockerfile CMD %q differs from compose proxy command %q", got, want)
	}
	if got, want := append(entrypoint[:1:1], health[2:]...), c.Services["proxy"].Healthcheck.Test[1:]; !slices.Equal(got, want) {
		t.Errorf("Dockerfile HEALTHCHECK %q differs from compose healthcheck %q", got, want)
	}
}

// TestDockerfileLinterFires shows the lint above can fail: each rule flags its mistake.
func TestDockerfileLinterFires(t *testing.T) {
	for _, tc := range []struct{ rule, src string }{
		{"FromAsCasing", "FROM golang:1.26 as build\nRUN true\n"},
		{"ConsistentInstructionCasing", "FROM scratch\nrun true\n"},
		{"JSONArgsRecommended", "FROM scratch\nCMD /bin/x\n"},
		{"StageNameCasing", "FROM scratch AS Build\n"},
		{"DuplicateStageName", "FROM scratch AS a\nFROM scratch AS a\n"},
		{"NoEmptyContinuation", "FROM scratch\nRUN a \\\n\n  b\n"},
		{"MaintainerDeprecated", "FROM scratch\nMAINTAINER x\n"},
	} {
		_, warnings := parseDockerfile(t, tc.src)
		if len(warnings) != 1 || !strings.HasPrefix(warnings[0], tc.rule) {
			t.Errorf("%q: warnings %q, want one %s", tc.src, warnings, tc.rule)
		}
	}
}

// TestEnvDockerfileFormat checks "swarm-proxy env --format dockerfile" the way Docker reads it:
// ENV values are split into words, unquoted and expanded by the Dockerfile reference's rules.
func TestEnvDockerfileFormat(t *testing.T) {
	vars := []agentenv.Var{{Name: "HTTP_PROXY", Value: "http://s%24:t@proxy:8080"}, {Name: "AWKWARD", Value: `it's "q" $HOME ${X} \ \\ ` + "`id`"}}
	var b bytes.Buffer
	if err := agentenv.Render(&b, agentenv.FormatDockerfile, vars); err != nil {
		t.Fatal(err)
	}
	stages, warnings := parseDockerfile(t, "FROM scratch\n"+b.String())
	if len(warnings) > 0 {
		t.Errorf("lint: %q", warnings)
	}
	got := map[string]string{}
	for _, in := range stages[0].instrs {
		if in.cmd != "ENV" {
			continue
		}
		for _, w := range in.words() {
			k, raw, _ := strings.Cut(w, "=")
			v, err := dockerWord(raw, nil)
			if err != nil {
				t.Fatalf("ENV %s: %v", k, err)
			}
			got[k] = v
		}
	}
	for _, v := range vars {
		if got[v.Name] != v.Value {
			t.Errorf("ENV %s = %q, want %q", v.Name, got[v.Name], v.Value)
		}
	}
}

// requireTool finds a linter, skipping without it except under CI, where scripts/test.sh installs it.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed and CI is set (scripts/test.sh installs Debian's %s)", name, pkg)
	}
	t.Skipf("%s is not installed (apt-get install %s, or run scripts/test.sh)", name, pkg)
	return ""
}

// TestComposeConfig validates compose.yaml against the compose schema with docker-compose, and
// shows with a broken copy that the check can fail.
func TestComposeConfig(t *testing.T) {
	dc := requireTool(t, "docker-compose", "docker-compose")
	good, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(".")
	tests := []struct {
		name    string
		content string
		ok      bool
	}{
		{"compose.yaml", string(good), true},
		{"misspelt key", strings.Replace(string(good), "healthcheck:", "helthcheck:", 1), false},
		{"bad boolean", strings.Replace(string(good), "internal: true", "internal: maybe", 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A copy next to the original keeps relative paths (build context, policy.yaml) valid.
			f, err := os.CreateTemp(abs, ".compose-*.yaml")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(f.Name()) })
			f.WriteString(tt.content)
			f.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, dc, "-f", f.Name(), "config", "-q")
			cmd.Env = append(os.Environ(), "DOCKER_HOST=unix:///nonexistent.sock")
			out, err := cmd.CombinedOutput()
			if (err == nil) != tt.ok {
				t.Fatalf("docker-compose config: err=%v, want ok=%v\n%s", err, tt.ok, out)
			}
		})
	}
}

func TestComposeInvariants(t *testing.T) {
	c := loadCompose(t)
	proxy, agent := c.Services["proxy"], c.Services["agent"]
	if len(proxy.Command) == 0 || proxy.Command[0] != "proxy" {
		t.Fatalf("proxy command %q, want the proxy subcommand", proxy.Command)
	}
	if !slices.Contains(proxy.Healthcheck.Test, "health") {
		t.Errorf("proxy healthcheck %q does not run swarm-proxy health", proxy.Healthcheck.Test)
	}
	if !slices.ContainsFunc(proxy.Volumes, func(v string) bool { return strings.HasSuffix(v, ":/var/log/swarm-proxy") }) {
		t.Errorf("proxy volumes %q: no log volume at /var/log/swarm-proxy", proxy.Volumes)
	}
	if i := slices.Index(proxy.Command, "--log-file"); i < 0 || !strings.HasPrefix(proxy.Command[i+1], "/var/log/swarm-proxy/") {
		t.Errorf("proxy command %q does not log into the volume", proxy.Command)
	}
	if len(agent.Networks) == 0 {
		t.Fatal("agent has no network")
	}
	for _, n := range agent.Networks {
		if !c.Networks[n].Internal {
			t.Errorf("agent network %q is not internal: true (it would have a route out)", n)
		}
		if !slices.Contains(proxy.Networks, n) {
			t.Errorf("agent network %q does not reach the proxy", n)
		}
	}
	if !slices.ContainsFunc(proxy.Networks, func(n string) bool { return !c.Networks[n].Internal }) {
		t.Error("the proxy has no network with a route out")
	}
	// An agent with CAP_NET_RAW writes raw frames past any firewall, and with CAP_NET_ADMIN it
	// rewrites the firewall: neither service may keep them (Docker grants NET_RAW by default).
	for name, svc := range map[string]struct{ drop, add []string }{"proxy": {proxy.CapDrop, proxy.CapAdd}, "agent": {agent.CapDrop, agent.CapAdd}} {
		if !slices.Contains(svc.drop, "ALL") {
			t.Errorf("%s: cap_drop %q, want [ALL]", name, svc.drop)
		}
		for _, c := range svc.add {
			if c == "NET_RAW" || c == "NET_ADMIN" || c == "ALL" {
				t.Errorf("%s: cap_add %s", name, c)
			}
		}
	}
	if !slices.Contains(agent.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("agent security_opt %q: want no-new-privileges:true, so a setuid binary cannot gain capabilities back", agent.SecurityOpt)
	}
	if agent.DependsOn["proxy"].Condition != "service_healthy" {
		t.Error("agent does not wait for a healthy proxy")
	}
	// docs/agents.md's quick start runs curl https://... in the agent: its image must have curl and
	// CA certificates (debian:*-slim has neither), and must stay up rather than run curl once.
	if !strings.HasPrefix(agent.Image, "curlimages/curl:") {
		t.Errorf("agent image %q: the quick start's curl needs an image with curl and CA certificates (curlimages/curl)", agent.Image)
	}
	if len(agent.Entrypoint) == 0 || agent.Entrypoint[0] != "sleep" {
		t.Errorf("agent entrypoint %q: curlimages/curl's own entrypoint runs curl and exits", agent.Entrypoint)
	}

	// The agent's environment is exactly what "swarm-proxy env" prints for this proxy.
	checkAgentEnv(t, agent.Environment, "--proxy", "http://proxy:8080")
}

// checkAgentEnv checks that env is exactly what "swarm-proxy env ARGS --format compose" prints.
func checkAgentEnv(t *testing.T, env map[string]string, args ...string) {
	t.Helper()
	var out, errb bytes.Buffer
	if err := cli.Run(context.Background(), append(append([]string{"env"}, args...), "--format", "compose"), nil, &out, &errb); err != nil {
		t.Fatalf("swarm-proxy env: %v %s", err, errb.String())
	}
	var want struct {
		Environment map[string]string `yaml:"environment"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &want); err != nil {
		t.Fatal(err)
	}
	for k, v := range want.Environment {
		if env[k] != v {
			t.Errorf("agent environment %s = %q, swarm-proxy env says %q", k, env[k], v)
		}
	}
	if len(env) != len(want.Environment) {
		t.Errorf("agent environment has %d variables, swarm-proxy env prints %d", len(env), len(want.Environment))
	}
}

func TestPolicyExample(t *testing.T) {
	p, err := policy.Load("policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != policy.Enforce {
		t.Errorf("mode %s, want enforce", p.Mode)
	}
	var f struct {
		Allow []struct {
			Host string `yaml:"host"`
		} `yaml:"allow"`
	}
	data, err := os.ReadFile("policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Allow {
		if wildcardOnPublicSuffix(r.Host) {
			t.Errorf("allow host %q: a wildcard over a public suffix admits every owner's names; list the hosts", r.Host)
		}
	}
}

// wildcardOnPublicSuffix reports whether host is "*.S" for a public suffix S (ICANN or private
// section, such as githubusercontent.com).
func wildcardOnPublicSuffix(host string) bool {
	base, ok := strings.CutPrefix(host, "*.")
	if !ok {
		return false
	}
	suffix, _ := publicsuffix.PublicSuffix(base)
	return suffix == base
}

func TestWildcardOnPublicSuffix(t *testing.T) {
	for host, want := range map[string]bool{
		"*.githubusercontent.com": true, "*.github.io": true, "*.co.uk": true, "*.com": true,
		"*.github.com": false, "raw.githubusercontent.com": false, "*.pythonhosted.org": false,
	} {
		if got := wildcardOnPublicSuffix(host); got != want {
			t.Errorf("wildcardOnPublicSuffix(%q) = %v, want %v", host, got, want)
		}
	}
}

// dockerignoreRule is one line of .dockerignore.
type dockerignoreRule struct {
	pattern string
	keep    bool // a "!" line: re-include what earlier lines left out
}

func loadDockerignore(t *testing.T) []dockerignoreRule {
	t.Helper()
	data, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var rules []dockerignoreRule
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, keep := strings.CutPrefix(line, "!")
		rules = append(rules, dockerignoreRule{path.Clean(p), keep})
	}
	return rules
}

// ignored applies rules the way Docker does: the last rule that matches p or one of its parent
// directories decides. Patterns are path.Match globs, with a leading "**/" matching any depth.
func ignored(rules []dockerignoreRule, p string) bool {
	out := false
	for _, r := range rules {
		for q := p; q != "." && q != "/"; q = path.Dir(q) {
			if globMatch(r.pattern, q) {
				out = !r.keep
				break
			}
		}
	}
	return out
}

func globMatch(pattern, name string) bool {
	if rest, ok := strings.CutPrefix(pattern, "**/"); ok {
		parts := strings.Split(name, "/")
		for i := range parts {
			if globMatch(rest, strings.Join(parts[i:], "/")) {
				return true
			}
		}
		return false
	}
	ok, _ := path.Match(pattern, name)
	return ok
}

// TestDockerignore checks that the build context keeps what deploy/Dockerfile builds from (its COPY
// sources and every file of the packages of cmd/swarm-proxy) and leaves out history, benchmark
// results and the rest.
func TestDockerignore(t *testing.T) {
	rules := loadDockerignore(t)
	for _, p := range []string{".git", ".git/HEAD", "bench/results/run.json", "bench/main.go", "docs/agents.md",
		"README.md", "test/e2e/netns_test.go", "swarm-proxy", "deploy/compose.yaml", ".ci/run",
		"internal/policy/policy_test.go", "internal/logstats/testdata/e2e/policy.yaml"} {
		if !ignored(rules, p) {
			t.Errorf("%s is in the build context", p)
		}
	}

	need := []string{"go.mod", "go.sum"}
	src, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages, _ := parseDockerfile(t, string(src))
	for _, s := range stages {
		for _, in := range s.instrs {
			if in.cmd != "COPY" || in.flags["from"] != "" {
				continue
			}
			args := in.exec
			if args == nil {
				args = in.words()
			}
			for _, p := range args[:len(args)-1] {
				if p != "." {
					need = append(need, p)
				}
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-deps",
		"-f", `{{if and .Module .Module.Main}}{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}`,
		"../cmd/swarm-proxy").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files := strings.Fields(string(out))
	if len(files) < 10 {
		t.Fatalf("go list found %d files of cmd/swarm-proxy", len(files))
	}
	for _, f := range files {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		need = append(need, filepath.ToSlash(rel))
	}
	for _, p := range need {
		if ignored(rules, p) {
			t.Errorf("%s is left out of the build context, but the Dockerfile needs it", p)
		}
	}
}
