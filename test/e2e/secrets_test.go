package e2e

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// recorder is an upstream on loopback that records every request it receives and echoes the
// credentials it got in response headers and a trailer, the way a careless or hostile service might.
type recorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []seenReq
}

type seenReq struct {
	Method, URI string
	Header      http.Header
}

func startRecorder(t *testing.T) *recorder { return newRecorder(t, nil) }

// newRecorder starts a recorder on loopback, over TLS with cert when it is given.
func newRecorder(t *testing.T, cert *tls.Certificate) *recorder {
	t.Helper()
	rec := newUnstartedRecorder(t)
	rec.start(cert)
	return rec
}

func newUnstartedRecorder(t *testing.T) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		rec.mu.Lock()
		rec.seen = append(rec.seen, seenReq{r.Method, r.RequestURI, r.Header.Clone()})
		rec.mu.Unlock()
		w.Header().Set("Trailer", "X-Echo-Trailer")
		w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
		w.Header().Set("X-Echo-Api-Key", r.Header.Get("X-Api-Key"))
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello from the upstream\n")
		w.Header().Set("X-Echo-Trailer", r.Header.Get("Authorization")+r.Header.Get("X-Api-Key"))
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

// start serves, over TLS with cert when it is given.
func (r *recorder) start(cert *tls.Certificate) {
	if cert != nil {
		r.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
		r.srv.StartTLS()
	} else {
		r.srv.Start()
	}
}

func (r *recorder) requests() []seenReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

func (r *recorder) port() int { return r.srv.Listener.Addr().(*net.TCPAddr).Port }

// url is the recorder's URL by name (localhost), so that the policy's host rules decide it.
func (r *recorder) url() string {
	scheme := "http"
	if r.srv.TLS != nil {
		scheme = "https"
	}
	return fmt.Sprintf("%s://localhost:%d", scheme, r.port())
}

// inspectionCA writes a CA with "swarm-proxy ca init" and returns the proxy flags that use it: rules
// with inject or secrets are inspected, and the proxy refuses to start them without a CA.
func inspectionCA(t *testing.T) []string {
	t.Helper()
	flags, _ := inspectionCADir(t)
	return flags
}

// inspectionCADir is inspectionCA and the directory of ca.pem and ca-key.pem.
func inspectionCADir(t *testing.T) (flags []string, dir string) {
	t.Helper()
	dir = t.TempDir()
	if r := Run(t, nil, binary, "ca", "init", "--dir", dir); r.Code != 0 {
		t.Fatalf("ca init: exit %d: %s", r.Code, r.Stderr)
	}
	return []string{"--ca-cert", filepath.Join(dir, "ca.pem"), "--ca-key", filepath.Join(dir, "ca-key.pem")}, dir
}

// secretValue is a random value that can only appear in output if the proxy leaked it.
func secretValue(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// writePrivate writes content to path with mode 0600, atomically (a reload never sees half a file).
func writePrivate(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// noValue fails the test if s holds any of the values.
func noValue(t *testing.T, what, s string, values ...string) {
	t.Helper()
	for _, v := range values {
		if strings.Contains(s, v) {
			t.Errorf("%s contains a secret value:\n%s", what, s)
		}
	}
}

// agentEnv is the agent's environment as `swarm-proxy env --secrets` gives it, without NO_PROXY
// (the tests' upstreams are on localhost, which NO_PROXY would send around the proxy).
func agentEnv(t *testing.T, proxyAddr, secretsFile string, values ...string) []string {
	t.Helper()
	return agentEnvArgs(t, []string{"--proxy", "http://" + proxyAddr, "--secrets", secretsFile}, values...)
}

// agentEnvArgs is agentEnv with the arguments of env given.
func agentEnvArgs(t *testing.T, args []string, values ...string) []string {
	t.Helper()
	r := Run(t, nil, binary, append(append([]string{"env"}, args...), "--format", "json")...)
	if r.Code != 0 {
		t.Fatalf("env --secrets: exit %d: %s", r.Code, r.Stderr)
	}
	noValue(t, "the output of env --secrets", r.Stdout+r.Stderr, values...)
	var vars map[string]string
	if err := json.Unmarshal([]byte(r.Stdout), &vars); err != nil {
		t.Fatalf("env --format json: %v\n%s", err, r.Stdout)
	}
	var env []string
	for k, v := range vars {
		if !strings.EqualFold(k, "NO_PROXY") {
			env = append(env, k+"="+v)
		}
	}
	slices.Sort(env)
	return env
}

// secretsPolicy binds github to the bound recorder (injected as Authorization), anthropic to the llm
// recorder (its placeholder let through), and missing to the missing recorder.
func secretsPolicy(bound, llm, missing *recorder) string {
	return LoopbackPolicy("enforce", fmt.Sprintf(`  - host: localhost
    ports: [%d]
    name: github-api
    inject:
      - header: Authorization
        value: "Bearer {{secret:github}}"
    secrets: [github]
  - host: localhost
    ports: [%d]
    name: llm-api
    secrets: [anthropic]
  - host: localhost
    ports: [%d]
    name: missing-api
    inject:
      - {header: X-Api-Key, value: "{{secret:missing}}"}
    secrets: [missing]
`, bound.port(), llm.port(), missing.port()))
}

// rawGet sends one request through the proxy on a raw socket and returns every byte the proxy sent
// back, trailers included.
func rawGet(t *testing.T, proxyAddr, url, header string) string {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	host := strings.TrimPrefix(url, "http://")
	host, _, _ = strings.Cut(host, "/")
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\nConnection: close\r\n\r\n", url, host, header)
	all, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		t.Fatalf("read the response: %v", err)
	}
	return string(all)
}

// TestSecretsPlainHTTP: the upstream of the rule that names a secret receives its value (injected
// header, placeholder in a header, placeholder in the query); the agent's environment and every byte
// it receives hold only placeholders; a placeholder sent to another host or rule is refused and that
// host receives nothing; a secret without a value fails closed; nothing the proxy writes holds a value.
func TestSecretsPlainHTTP(t *testing.T) {
	gh, llmKey := secretValue(t, "ghp_"), secretValue(t, "sk-ant-")
	bound, llm, missing, unbound := startRecorder(t), startRecorder(t), startRecorder(t), startRecorder(t)
	dir := t.TempDir()
	writePrivate(t, filepath.Join(dir, "github"), gh+"\n")
	secretsFile := filepath.Join(dir, "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf(`github:
  value_from: {file: %s}
  placeholder_env: GITHUB_TOKEN
anthropic:
  value: %q
  placeholder_env: ANTHROPIC_API_KEY
missing:
  value_from: {file: %s}
`, filepath.Join(dir, "github"), llmKey, filepath.Join(dir, "nonexistent")))
	pol := WriteFile(t, "policy.yaml", secretsPolicy(bound, llm, missing))
	logFile := filepath.Join(dir, "access.log")
	p := StartProxy(t, append(inspectionCA(t), "--policy", pol, "--secrets", secretsFile, "--log-file", logFile)...)
	p.WaitStderr(`secret=missing`) // logged at start: requests that need it fail closed

	env := agentEnv(t, p.Addr, secretsFile, gh, llmKey)
	if !slices.Contains(env, "GITHUB_TOKEN=swarm-proxy-secret:github") || !slices.Contains(env, "ANTHROPIC_API_KEY=swarm-proxy-secret:anthropic") {
		t.Fatalf("agent env %v lacks the placeholders", env)
	}
	agent := func(script string) Result {
		t.Helper()
		r := Run(t, env, "sh", "-c", script)
		noValue(t, "what the agent received", r.Stdout+r.Stderr, gh, llmKey)
		return r
	}

	// The bound rule: the injected header replaces the agent's, the query placeholder is replaced.
	r := agent(`curl -sS -D - -H "Authorization: token $GITHUB_TOKEN" "` + bound.url() + `/user?access_token=$GITHUB_TOKEN&page=2"`)
	if !strings.Contains(r.Stdout, "200 OK") || !strings.Contains(r.Stdout, "hello from the upstream") || !strings.Contains(r.Stdout, "X-Echo-Authorization: [redacted]") {
		t.Fatalf("bound request: %+v", r)
	}
	seen := bound.requests()
	if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+gh || seen[0].URI != "/user?access_token="+gh+"&page=2" {
		t.Fatalf("the bound upstream saw %+v, want the injected header and the value in the query", seen)
	}
	// Naming the injected header as hop-by-hop does not strip it: it is set after the proxy has removed them.
	agent(`curl -sS -o /dev/null -H "Connection: Authorization" -H "Authorization: x" ` + bound.url() + `/hop`)
	if seen := bound.requests(); len(seen) != 2 || seen[1].Header.Get("Authorization") != "Bearer "+gh {
		t.Fatalf("with Connection: Authorization the upstream saw %+v", seen[len(seen)-1].Header)
	}
	// The llm rule: the agent's SDK sends the placeholder in its own header.
	r = agent(`curl -sS -D - -H "X-Api-Key: $ANTHROPIC_API_KEY" ` + llm.url() + `/v1/messages`)
	if seen := llm.requests(); !strings.Contains(r.Stdout, "X-Echo-Api-Key: [redacted]") || len(seen) != 1 || seen[0].Header.Get("X-Api-Key") != llmKey {
		t.Fatalf("llm request: %+v; upstream saw %+v", r, seen)
	}

	// Every byte of a response, trailers included, read on a raw socket.
	raw := rawGet(t, p.Addr, bound.url()+"/raw", "X-Api-Key: x")
	noValue(t, "the raw response", raw, gh, llmKey)
	if !strings.Contains(raw, "X-Echo-Trailer: [redacted]") {
		t.Errorf("the trailer was not redacted:\n%s", raw)
	}

	// Placeholders where they are not bound: refused, and the host receives nothing.
	for _, tt := range []struct{ name, script string }{
		{"header to an unbound host", `curl -sS -D - -H "Authorization: Bearer $GITHUB_TOKEN" ` + unbound.url() + `/steal`},
		{"another case to an unbound host", `curl -sS -D - -H "X-Key: SWARM-PROXY-SECRET:GitHub" ` + unbound.url() + `/steal`},
		{"query to an unbound host", `curl -sS -D - "` + unbound.url() + `/steal?t=$GITHUB_TOKEN"`},
		{"another secret to a bound host", `curl -sS -D - -H "X-Api-Key: $ANTHROPIC_API_KEY" ` + bound.url() + `/steal`},
		{"path to a bound host", `curl -sS -D - "` + llm.url() + `/steal/$GITHUB_TOKEN"`},
	} {
		before := len(bound.requests()) + len(llm.requests())
		r := agent(tt.script)
		if !strings.Contains(r.Stdout, "403 Forbidden") || !strings.Contains(r.Stdout, "X-Swarm-Proxy-Decision: deny; code=secret_not_bound") {
			t.Errorf("%s: want 403 secret_not_bound, got\n%s", tt.name, r.Stdout)
		}
		if n := len(unbound.requests()) + len(bound.requests()) + len(llm.requests()); n != before {
			t.Errorf("%s: an upstream received the refused request", tt.name)
		}
	}

	// A secret without a value: 502, nothing sent.
	r = agent(`curl -sS -D - ` + missing.url() + `/x`)
	if !strings.Contains(r.Stdout, "502 Bad Gateway") || !strings.Contains(r.Stdout, "X-Swarm-Proxy-Error: secret_unavailable; code=secret_unavailable") || len(missing.requests()) != 0 {
		t.Errorf("missing secret: want 502 secret_unavailable and no request upstream, got\n%s\nupstream saw %d", r.Stdout, len(missing.requests()))
	}

	recs := func() []accesslog.Record {
		data, _ := os.ReadFile(logFile)
		return ParseRecords(t, string(data))
	}
	Eventually(t, "the access records", func() bool { return len(recs()) >= 10 })
	for _, rec := range recs() {
		switch {
		case rec.Path == "/user" || rec.Path == "/raw" || rec.Path == "/hop":
			if !slices.Equal(rec.Secrets, []string{"github"}) || rec.Status != 200 {
				t.Errorf("record %+v: want secrets [github]", rec)
			}
		case rec.Path == "/v1/messages":
			if !slices.Equal(rec.Secrets, []string{"anthropic"}) {
				t.Errorf("record %+v: want secrets [anthropic]", rec)
			}
		case strings.HasPrefix(rec.Path, "/steal"):
			if rec.Error != accesslog.ErrorSecretNotBound || rec.Decision != accesslog.DecisionDeny || rec.Status != 403 || rec.Secrets != nil {
				t.Errorf("record %+v: want a secret_not_bound refusal", rec)
			}
		case rec.Path == "/x":
			if rec.Error != accesslog.ErrorSecretUnavailable || rec.Status != 502 {
				t.Errorf("record %+v: want secret_unavailable", rec)
			}
		}
	}

	// Everything the run wrote: the access log, stderr, stdout and /metrics.
	_, metrics := httpGet(t, "http://"+p.Admin+"/metrics")
	logData, _ := os.ReadFile(logFile)
	for what, s := range map[string]string{"access log": string(logData), "stderr": p.Stderr(), "stdout": p.Stdout(), "/metrics": metrics} {
		noValue(t, what, s, gh, llmKey)
	}
	for _, e := range env {
		noValue(t, "the agent's environment", e, gh, llmKey)
	}
}

// TestSecretsReload: a secret added to the file takes effect without a restart; a broken file or
// one that others may read is refused with the reason logged, and the secrets in force stay; a
// rotated value file takes effect at the next poll.
func TestSecretsReload(t *testing.T) {
	val := secretValue(t, "late-")
	up := startRecorder(t)
	dir := t.TempDir()
	secretsFile := filepath.Join(dir, "secrets.yaml")
	writePrivate(t, secretsFile, "other:\n  value: \"x-other\"\n")
	pol := WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", fmt.Sprintf(`  - host: localhost
    ports: [%d]
    inject: [{header: X-Api-Key, value: "{{secret:late}}"}]
    secrets: [late]
`, up.port())))
	p := StartProxy(t, append(inspectionCA(t), "--policy", pol, "--secrets", secretsFile)...)
	p.WaitStderr("a policy rule names a secret that the secrets file does not define")
	get := func() Result {
		t.Helper()
		return Curl(t, "-D", "-", "-x", "http://"+p.Addr, up.url()+"/")
	}
	if r := get(); !strings.Contains(r.Stdout, "502") || !strings.Contains(r.Stdout, "code=secret_unavailable") || len(up.requests()) != 0 {
		t.Fatalf("before the reload: %+v", r)
	}

	writePrivate(t, secretsFile, fmt.Sprintf("other:\n  value: \"x-other\"\nlate:\n  value: %q\n", val))
	p.WaitStderr("secrets reloaded")
	if r := get(); !strings.Contains(r.Stdout, "200 OK") || len(up.requests()) != 1 || up.requests()[0].Header.Get("X-Api-Key") != val {
		t.Fatalf("after the reload: %+v, upstream saw %+v", r, up.requests())
	}

	writePrivate(t, secretsFile, "late:\n  value: [unclosed\n")
	p.WaitStderr("secrets reload rejected; keeping the secrets in force")
	writePrivate(t, secretsFile, fmt.Sprintf("late:\n  value: %q\n", val+"-changed"))
	os.Chmod(secretsFile, 0o644)
	p.WaitStderr("run: chmod 600 " + secretsFile)
	if r := get(); !strings.Contains(r.Stdout, "200 OK") || len(up.requests()) != 2 || up.requests()[1].Header.Get("X-Api-Key") != val {
		t.Fatalf("after the rejected reloads the secrets in force must stay: %+v, upstream saw %+v", r, up.requests())
	}

	// A value file rotated under an unchanged secrets file is read again at the next poll.
	valueFile := filepath.Join(dir, "late-value")
	rotated, rotatedAgain := secretValue(t, "rotated-"), secretValue(t, "rotated-again-")
	writePrivate(t, valueFile, rotated+"\n")
	writePrivate(t, secretsFile, fmt.Sprintf("late:\n  value_from: {file: %s}\n", valueFile))
	reloads := func(n int) {
		t.Helper()
		Eventually(t, fmt.Sprintf("%d secrets reloads", n), func() bool { return strings.Count(p.Stderr(), "secrets reloaded") >= n })
	}
	reloads(2)
	writePrivate(t, valueFile, rotatedAgain+"\n")
	reloads(3)
	if r := get(); !strings.Contains(r.Stdout, "200 OK") || up.requests()[len(up.requests())-1].Header.Get("X-Api-Key") != rotatedAgain {
		t.Fatalf("after rotating the value file: %+v, upstream saw %+v", r, up.requests())
	}
	for _, v := range []string{val, rotated, rotatedAgain} {
		noValue(t, "stderr", p.Stderr(), v)
		noValue(t, "stdout", p.Stdout(), v)
	}
}

// TestSecretsStartRefused: the proxy does not start with a secrets file that others may read, or
// with a value holding a line break, and says why without the value.
func TestSecretsStartRefused(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.yaml")
	os.WriteFile(open, []byte("a:\n  value: \"v\"\n"), 0o644)
	crlf := filepath.Join(dir, "crlf.yaml")
	writePrivate(t, crlf, "a:\n  value: \"secret-TESTVALUE\\r\\nX-Injected: 1\"\n")
	for file, want := range map[string]string{
		open: "mode 0644: group or others may access the secrets file; run: chmod 600 " + open,
		crlf: `secret "a": the value from inline value contains CR, LF, NUL or another control character`,
	} {
		r := Run(t, nil, binary, "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "", "--secrets", file)
		if r.Code == 0 || !strings.Contains(r.Stderr, want) || strings.Contains(r.Stderr, "TESTVALUE") {
			t.Errorf("%s: exit %d, stderr %q, want %q", file, r.Code, r.Stderr, want)
		}
	}
}

// requireClient skips the test when a client is missing, or fails it under CI (scripts/test.sh
// installs them).
func requireClient(t *testing.T, name string, args ...string) {
	t.Helper()
	if err := exec.Command(name, args...).Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s %v failed (scripts/test.sh installs it): %v", name, args, err)
		}
		t.Skipf("%s %v failed: %v", name, args, err)
	}
}

// sdkScript is what an SDK does with the keys in its environment: a GitHub call with the token in
// Authorization and in a query parameter, an LLM call with the key in x-api-key. It prints what it
// received and its own environment.
const pythonSDK = `
import json, os, requests
gh = requests.get(os.environ["GITHUB_URL"] + "/repos/o/r", params={"access_token": os.environ["GITHUB_TOKEN"]},
                  headers={"Authorization": "token " + os.environ["GITHUB_TOKEN"]})
llm = requests.post(os.environ["LLM_URL"] + "/v1/messages", json={"model": "m", "messages": []},
                    headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"]})
print(json.dumps({"github": [gh.status_code, dict(gh.headers), gh.text], "llm": [llm.status_code, dict(llm.headers), llm.text],
                  "env": dict(os.environ)}))
`

// nodeSDK calls fetch as SDKs do. Node 24 and later route fetch through HTTP_PROXY/HTTPS_PROXY with
// NODE_USE_ENV_PROXY=1 (which env sets). Older Node's fetch ignores them; SDKs there pass a dispatcher
// (the Anthropic SDK's fetchOptions: {dispatcher: new ProxyAgent(...)}). The test cannot install the
// undici package, so it builds the dispatcher from the Agent class of Node's own fetch with a connector
// that opens a CONNECT tunnel through the proxy (TLS inside it for https): fetch itself runs either way.
const nodeSDK = `
const net = require("net"), tls = require("tls");
const proxy = new URL(process.env.HTTP_PROXY);
function tunnel(opts, cb) {
  const port = opts.port || (opts.protocol === "https:" ? 443 : 80);
  const sock = net.connect(Number(proxy.port), proxy.hostname);
  sock.once("error", cb);
  sock.write("CONNECT " + opts.hostname + ":" + port + " HTTP/1.1\r\nHost: " + opts.hostname + ":" + port + "\r\n\r\n");
  let head = "";
  const onData = d => {
    head += d.toString("latin1");
    const end = head.indexOf("\r\n\r\n");
    if (end < 0) return;
    sock.removeListener("data", onData);
    if (!/^HTTP\/1\.[01] 200/.test(head)) { sock.destroy(); cb(new Error("CONNECT answered " + head.split("\r\n")[0])); return; }
    if (opts.protocol !== "https:") { cb(null, sock); return; }
    const t = tls.connect({socket: sock, servername: opts.servername || opts.hostname, ALPNProtocols: ["http/1.1"]}, () => cb(null, t));
    t.once("error", cb);
  };
  sock.on("data", onData);
}
async function fetchOptions() {
  if (Number(process.versions.node.split(".")[0]) >= 24) return {};
  const key = Symbol.for("undici.globalDispatcher.1");
  if (!globalThis[key]) { try { await fetch(proxy.origin + "/"); } catch {} } // makes Node's own Agent
  const Agent = globalThis[key].constructor;
  return {dispatcher: new Agent({connect: tunnel})};
}
(async () => {
  const opts = await fetchOptions();
  const call = (method, url, headers, body) => fetch(url, {method, headers, body, ...opts}).then(async r => [r.status, Object.fromEntries(r.headers), await r.text()]);
  const tok = process.env.GITHUB_TOKEN, key = process.env.ANTHROPIC_API_KEY;
  const github = await call("GET", process.env.GITHUB_URL + "/repos/o/r?access_token=" + encodeURIComponent(tok), {authorization: "token " + tok});
  const llm = await call("POST", process.env.LLM_URL + "/v1/messages", {"x-api-key": key, "content-type": "application/json"}, "{}");
  console.log(JSON.stringify({github, llm, env: process.env}));
})();
`

// TestSecretsSDKClients: Python requests and Node, with only placeholders in their environment, reach
// the upstreams with the real values and see none of them.
func TestSecretsSDKClients(t *testing.T) {
	t.Run("http", func(t *testing.T) { testSDKClients(t, false) })
	t.Run("inspected-https", func(t *testing.T) { testSDKClients(t, true) })
}

func testSDKClients(t *testing.T, useTLS bool) {
	gh, llmKey := secretValue(t, "ghp_"), secretValue(t, "sk-ant-")
	var cert *tls.Certificate
	var upstreamCA string
	if useTLS {
		c, pemFile := localhostCert(t)
		cert, upstreamCA = &c, pemFile
	}
	github, llm, missing := newRecorder(t, cert), newRecorder(t, cert), newRecorder(t, cert)
	dir := t.TempDir()
	secretsFile := filepath.Join(dir, "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf("github:\n  value: %q\n  placeholder_env: GITHUB_TOKEN\nanthropic:\n  value: %q\n  placeholder_env: ANTHROPIC_API_KEY\n", gh, llmKey))
	caFlags, caDir := inspectionCADir(t)
	args := append(caFlags, "--policy", WriteFile(t, "policy.yaml", secretsPolicy(github, llm, missing)), "--secrets", secretsFile)
	envArgs := []string{"--secrets", secretsFile}
	if useTLS {
		args = append(args, "--upstream-ca", upstreamCA)
		envArgs = append(envArgs, agentCAArgs(t, caDir)...)
	}
	p := StartProxy(t, args...)
	env := append(agentEnvArgs(t, append(envArgs, "--proxy", "http://"+p.Addr), gh, llmKey), "GITHUB_URL="+github.url(), "LLM_URL="+llm.url())

	for _, c := range []struct {
		name  string
		check []string
		argv  []string
	}{
		{"python-requests", []string{"python3", "-c", "import requests"}, []string{"python3", "-c", pythonSDK}},
		{"node", []string{"node", "--version"}, []string{"node", "-e", nodeSDK}},
	} {
		t.Run(c.name, func(t *testing.T) {
			requireClient(t, c.check[0], c.check[1:]...)
			nGH, nLLM := len(github.requests()), len(llm.requests())
			r := Run(t, env, c.argv[0], c.argv[1:]...)
			noValue(t, "what the client received and its environment", r.Stdout+r.Stderr, gh, llmKey)
			var out struct {
				GitHub, LLM []any
				Env         map[string]string
			}
			if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil || len(out.GitHub) != 3 || len(out.LLM) != 3 {
				t.Fatalf("client output: %v\n%s\n%s\nACCESS LOG:\n%s", err, r.Stdout, r.Stderr, p.Stdout())
			}
			if out.GitHub[0] != 200.0 || out.LLM[0] != 200.0 || out.Env["GITHUB_TOKEN"] != "swarm-proxy-secret:github" {
				t.Fatalf("client saw %v / %v", out.GitHub, out.LLM)
			}
			ghSeen, llmSeen := github.requests()[nGH:], llm.requests()[nLLM:]
			if len(ghSeen) != 1 || ghSeen[0].Header.Get("Authorization") != "Bearer "+gh || ghSeen[0].URI != "/repos/o/r?access_token="+gh {
				t.Errorf("github upstream saw %+v", ghSeen)
			}
			if len(llmSeen) != 1 || llmSeen[0].Header.Get("X-Api-Key") != llmKey {
				t.Errorf("llm upstream saw %+v", llmSeen)
			}
		})
	}
	noValue(t, "stderr", p.Stderr(), gh, llmKey)
	noValue(t, "the access log", p.Stdout(), gh, llmKey)
}

// TestSecretsBroker: in broker mode the broker holds the secrets: the worker sends placeholders, the
// upstream behind the provider receives the value, and neither the worker nor the provider's output
// holds it.
func TestSecretsBroker(t *testing.T) {
	gh := secretValue(t, "ghp_")
	up, other := startRecorder(t), startRecorder(t)
	secretsFile := filepath.Join(t.TempDir(), "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf("github:\n  value: %q\n  placeholder_env: GITHUB_TOKEN\n", gh))
	pol := WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", fmt.Sprintf(`  - host: localhost
    ports: [%d]
    inject: [{header: Authorization, value: "Bearer {{secret:github}}"}]
    secrets: [github]
`, up.port())))
	b := startBroker(t, append(inspectionCA(t), "--policy", pol, "--secrets", secretsFile)...)
	tf, tk := b.ticket("secrets", "1h")
	prov := b.provider(tf, "secrets", 1)

	r := Curl(t, "-D", "-", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "-H", "Authorization: token swarm-proxy-secret:github", up.url()+"/user")
	noValue(t, "what the worker received", r.Stdout+r.Stderr, gh)
	if seen := up.requests(); !strings.Contains(r.Stdout, "200 OK") || len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+gh {
		t.Fatalf("through the broker: %+v; upstream saw %+v", r, seen)
	}
	r = Curl(t, "-D", "-", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "-H", "Authorization: token swarm-proxy-secret:github", other.url()+"/steal")
	if !strings.Contains(r.Stdout, "code=secret_not_bound") || len(other.requests()) != 0 {
		t.Fatalf("unbound through the broker: %+v; other upstream saw %d", r, len(other.requests()))
	}
	rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Path == "/user" })
	if !slices.Equal(rec.Secrets, []string{"github"}) || rec.Session != "secrets" {
		t.Errorf("broker record %+v", rec)
	}
	for what, s := range map[string]string{"broker stderr": b.Stderr(), "broker log": b.Stdout(), "provider stderr": prov.Stderr(), "provider stdout": prov.Stdout()} {
		noValue(t, what, s, gh)
	}
}

// echoingUpstream is a hostile upstream of a bound rule: it answers each request with a malformed
// response whose first line is the Authorization header it received, so the Transport's error quotes
// the secret's value.
func echoingUpstream(t *testing.T) int {
	t.Helper()
	ln := loopbacktest.Start(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(waitTimeout))
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s\r\n\r\n", req.Header.Get("Authorization"))
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// TestSecretsNotInTransportErrors: an upstream that sends the value back as a malformed response gets
// a 502 whose reason, header and log line hold [redacted], not the value.
func TestSecretsNotInTransportErrors(t *testing.T) {
	gh := secretValue(t, "ghp_")
	port := echoingUpstream(t)
	secretsFile := filepath.Join(t.TempDir(), "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf("github:\n  value: %q\n", gh))
	pol := WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", fmt.Sprintf(`  - host: localhost
    ports: [%d]
    inject: [{header: Authorization, value: "{{secret:github}}"}]
    secrets: [github]
`, port)))
	p := StartProxy(t, append(inspectionCA(t), "--policy", pol, "--secrets", secretsFile, "--log-level", "debug")...)
	r := Curl(t, "-D", "-", "-x", "http://"+p.Addr, fmt.Sprintf("http://localhost:%d/x", port))
	if !strings.Contains(r.Stdout, "502") {
		t.Fatalf("want a 502 for a malformed response, got %+v", r)
	}
	noValue(t, "the 502 the agent received", r.Stdout+r.Stderr, gh)
	rec := p.WaitRecord(func(r accesslog.Record) bool { return r.Path == "/x" })
	if !strings.Contains(rec.Reason, "[redacted]") {
		t.Errorf("record reason %q: want the value replaced with [redacted]", rec.Reason)
	}
	noValue(t, "the access log", p.Stdout(), gh)
	noValue(t, "stderr", p.Stderr(), gh)
}

// TestSecretsNotInCleartext: a rule without ports binds its secret on every port, so an agent could
// have the secret sent in clear by asking for http:// instead of https://. curl's plain request gets a
// 403 with code=secret_cleartext and nothing reaches the upstream, while HTTPS on the same rule carries
// the secret; with the port listed on the rule, the operator's choice, the plain request carries it too.
func TestSecretsNotInCleartext(t *testing.T) {
	gh := secretValue(t, "ghp_")
	up := startRecorder(t)
	cert, upstreamCA := localhostCert(t)
	overTLS := newRecorder(t, &cert)
	secretsFile := filepath.Join(t.TempDir(), "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf("github:\n  value: %q\n", gh))
	rule := `  - host: localhost
    name: github-api
%s    inject: [{header: Authorization, value: "Bearer {{secret:github}}"}]
    secrets: [github]
`
	pol := WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", fmt.Sprintf(rule, "")))
	caFlags, caDir := inspectionCADir(t)
	p := StartProxy(t, append(caFlags, "--policy", pol, "--secrets", secretsFile, "--upstream-ca", upstreamCA, "--policy-poll", "100ms")...)

	r := Curl(t, "-sS", "-D", "-", "-x", "http://"+p.Addr, up.url()+"/clear")
	if !strings.Contains(r.Stdout, " 403 ") || !strings.Contains(r.Stdout, "code=secret_cleartext") {
		t.Fatalf("plain request on a rule for every port: want 403 code=secret_cleartext, got:\n%s%s", r.Stdout, r.Stderr)
	}
	noValue(t, "the 403", r.Stdout+r.Stderr, gh)
	rec := p.WaitRecord(func(r accesslog.Record) bool { return r.Path == "/clear" })
	if rec.Status != 403 || rec.Error != accesslog.ErrorSecretCleartext || rec.Rule != "github-api" || rec.Decision != accesslog.DecisionDeny {
		t.Errorf("record %+v", rec)
	}
	if got := up.requests(); len(got) != 0 {
		t.Fatalf("the upstream received %d requests: the secret went out in clear", len(got))
	}

	// HTTPS, which the rule's secrets make the proxy inspect, carries the secret on any port.
	r = Curl(t, "-sS", "-D", "-", "--cacert", filepath.Join(caDir, "ca.pem"), "-x", "http://"+p.Addr, overTLS.url()+"/tls")
	if seen := overTLS.requests(); !strings.Contains(r.Stdout, " 200") || len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+gh {
		t.Fatalf("HTTPS on the same rule: %s%s\nupstream saw %+v", r.Stdout, r.Stderr, seen)
	}

	// Listing the port is the operator's choice: the same request then carries the secret.
	os.WriteFile(pol, []byte(LoopbackPolicy("enforce", fmt.Sprintf(rule, fmt.Sprintf("    ports: [%d]\n", up.port())))), 0o644)
	p.WaitStderr("policy reloaded")
	r = Curl(t, "-sS", "-D", "-", "-x", "http://"+p.Addr, up.url()+"/listed")
	if !strings.Contains(r.Stdout, " 200 ") {
		t.Fatalf("plain request on a rule that lists the port: %s%s", r.Stdout, r.Stderr)
	}
	got := up.requests()
	if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+gh {
		t.Fatalf("upstream saw %+v, want one request with the injected header", got)
	}
	noValue(t, "the access log", p.Stdout(), gh)
}
