package e2e

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
)

// newInspectionCA runs `ca init` and `ca bundle` with the built binary and returns the CA's directory.
func newInspectionCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	r := Run(t, nil, binary, "ca", "init", "--dir", dir)
	if r.Code != 0 || !strings.Contains(r.Stdout, "SHA-256 fingerprint: ") {
		t.Fatalf("ca init: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	r = Run(t, nil, binary, "ca", "bundle", "--ca", filepath.Join(dir, "ca.pem"), "--out", filepath.Join(dir, "ca-bundle.pem"))
	if r.Code != 0 {
		t.Fatalf("ca bundle: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	return dir
}

// upstreamCA is the CA of the test's HTTPS targets: the proxy trusts it through --upstream-ca, the
// agent never does (it trusts only the inspection CA, through env --ca).
type upstreamCA struct {
	file   string
	minter *inspect.Minter
}

func newUpstreamCA(t *testing.T) *upstreamCA {
	t.Helper()
	dir := t.TempDir()
	ca, err := inspect.CreateCA(dir, "e2e upstream", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &upstreamCA{file: filepath.Join(dir, inspect.CertFile), minter: &inspect.Minter{CA: ca}}
}

// serve starts an HTTPS server on loopback with a certificate for name (HTTP/2 offered).
func (u *upstreamCA) serve(t *testing.T, name string, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	leaf, err := u.minter.Certificate(name)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, port
}

// agentEnvCA is what an agent gets from `swarm-proxy env --proxy URL --ca CA`, as KEY=VALUE. NO_PROXY
// is emptied: the test's targets are named localhost, which env keeps off the proxy by default.
func agentEnvCA(t *testing.T, proxyURL, caDir string, extra ...string) []string {
	t.Helper()
	r := Run(t, nil, binary, append([]string{"env", "--proxy", proxyURL, "--ca", filepath.Join(caDir, "ca.pem"), "--format", "json"}, extra...)...)
	if r.Code != 0 {
		t.Fatalf("env --ca: exit %d: %s", r.Code, r.Stderr)
	}
	var vars map[string]string
	if err := json.Unmarshal([]byte(r.Stdout), &vars); err != nil {
		t.Fatalf("env --ca printed %q: %v", r.Stdout, err)
	}
	if vars["SSL_CERT_FILE"] != filepath.Join(caDir, "ca-bundle.pem") || vars["NODE_EXTRA_CA_CERTS"] != filepath.Join(caDir, "ca.pem") {
		t.Fatalf("env --ca: %v", vars)
	}
	var env []string
	for k, v := range vars {
		if strings.EqualFold(k, "NO_PROXY") {
			v = ""
		}
		env = append(env, k+"="+v)
	}
	return append(env, "HOME="+t.TempDir()) // no user configuration of git, pip or npm
}

// inspectTarget is the HTTPS target behind the inspecting rule: a GitHub-like API, a git
// repository served by git http-backend, a PEP 503 index and an npm registry. It records the
// requests it serves.
type inspectTarget struct {
	srv  *httptest.Server
	port string
	base string // https://localhost:PORT
	mu   sync.Mutex
	seen []string // "METHOD PATH"
}

func (it *inspectTarget) served() []string {
	it.mu.Lock()
	defer it.mu.Unlock()
	return append([]string(nil), it.seen...)
}

// apiBody is the body of GET /repos/myorg/tool: bytes with every value, compared exactly.
var apiBody = func() []byte {
	b := make([]byte, 70000)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}()

func startInspectTarget(t *testing.T, u *upstreamCA) *inspectTarget {
	t.Helper()
	it := &inspectTarget{}
	mux := http.NewServeMux()
	mux.HandleFunc("/repos/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Proto", r.Proto)
		w.Write(apiBody)
	})
	mux.Handle("/git/", gitBackend(t))
	wheel, wheelName := inspectWheel(t)
	mux.HandleFunc("/simple/inspectdemo/", func(w http.ResponseWriter, r *http.Request) {
		sum := sha256Hex(wheel)
		fmt.Fprintf(w, "<html><body><a href=\"/files/%s#sha256=%s\">%s</a></body></html>", wheelName, sum, wheelName)
	})
	mux.HandleFunc("/files/"+wheelName, func(w http.ResponseWriter, r *http.Request) { w.Write(wheel) })
	tgz := buildNpmTarball(t)
	mux.HandleFunc("/npm/inspect-demo", func(w http.ResponseWriter, r *http.Request) {
		s1 := sha1.Sum(tgz)
		s512 := sha512.Sum512(tgz)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"name": "inspect-demo", "dist-tags": map[string]string{"latest": "1.0.0"},
			"versions": map[string]any{"1.0.0": map[string]any{"name": "inspect-demo", "version": "1.0.0",
				"dist": map[string]string{"tarball": it.base + "/npm/inspect-demo/-/inspect-demo-1.0.0.tgz",
					"shasum": hex.EncodeToString(s1[:]), "integrity": "sha512-" + base64.StdEncoding.EncodeToString(s512[:])}}},
		})
	})
	mux.HandleFunc("/npm/inspect-demo/-/inspect-demo-1.0.0.tgz", func(w http.ResponseWriter, r *http.Request) { w.Write(tgz) })
	it.srv, it.port = u.serve(t, "localhost", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		it.mu.Lock()
		it.seen = append(it.seen, r.Method+" "+r.URL.EscapedPath())
		it.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	it.base = "https://localhost:" + it.port
	return it
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// gitBackend serves a bare repository with one commit through git http-backend (CGI), push
// enabled: only the proxy's rule stands between an agent and a push.
func gitBackend(t *testing.T) http.Handler {
	t.Helper()
	root := t.TempDir()
	work := filepath.Join(t.TempDir(), "work")
	git := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = cleanEnv("GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@example.com", "GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@example.com", "HOME="+root)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	os.MkdirAll(work, 0o755)
	git(work, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(work, "README"), []byte("inspected clone\n"), 0o644)
	git(work, "add", "README")
	git(work, "commit", "-q", "-m", "first")
	git(root, "clone", "-q", "--bare", work, "repo.git")
	git(filepath.Join(root, "repo.git"), "config", "http.receivepack", "true")
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	return &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(out)), "git-http-backend"),
		Root: "/git",
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
	}
}

// inspectWheel makes a minimal wheel of the package inspectdemo, version 1.0.
func inspectWheel(t *testing.T) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	files := map[string]string{
		"inspectdemo/__init__.py":                 "VALUE = 'installed through an inspected proxy'\n",
		"inspectdemo-1.0.dist-info/METADATA":      "Metadata-Version: 2.1\nName: inspectdemo\nVersion: 1.0\n",
		"inspectdemo-1.0.dist-info/WHEEL":         "Wheel-Version: 1.0\nGenerator: e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
		"inspectdemo-1.0.dist-info/top_level.txt": "inspectdemo\n",
	}
	var record strings.Builder
	for _, name := range []string{"inspectdemo/__init__.py", "inspectdemo-1.0.dist-info/METADATA", "inspectdemo-1.0.dist-info/WHEEL", "inspectdemo-1.0.dist-info/top_level.txt"} {
		w, _ := zw.Create(name)
		io.WriteString(w, files[name])
		sum := sha256.Sum256([]byte(files[name]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", name, base64.RawURLEncoding.EncodeToString(sum[:]), len(files[name]))
	}
	record.WriteString("inspectdemo-1.0.dist-info/RECORD,,\n")
	w, _ := zw.Create("inspectdemo-1.0.dist-info/RECORD")
	io.WriteString(w, record.String())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), "inspectdemo-1.0-py3-none-any.whl"
}

// buildNpmTarball makes the tarball of the npm package inspect-demo 1.0.0.
func buildNpmTarball(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range map[string]string{
		"package/package.json": `{"name":"inspect-demo","version":"1.0.0","main":"index.js"}`,
		"package/index.js":     "module.exports = 'installed through an inspected proxy';\n",
	} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(0, 0)})
		io.WriteString(tw, content)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// inspectPolicyFor is the rule under test: read-only access to the API under /repos/myorg, to the
// index, the registry and git's fetch side (GET, and the POST of git-upload-pack), nothing else on
// localhost; the loopback cidr rule lets the proxy connect to the test servers.
func inspectPolicyFor(port string) string {
	return fmt.Sprintf(`mode: enforce
allow:
  - host: localhost
    ports: [%s]
    name: agent-api
    http:
      - methods: [GET, HEAD]
        paths: ["/repos/myorg/**", "/simple/**", "/files/*", "/npm/**", "/git/*/info/refs"]
      - methods: [POST]
        paths: ["/git/*/git-upload-pack"]
  - cidr: 127.0.0.0/8
    name: test-loopback
`, port)
}

func startInspectingProxy(t *testing.T, it *inspectTarget, caDir, upstreamCAFile string) *Proc {
	t.Helper()
	args := []string{"--policy", WriteFile(t, "policy.yaml", inspectPolicyFor(it.port)),
		"--ca-cert", filepath.Join(caDir, "ca.pem"), "--ca-key", filepath.Join(caDir, "ca-key.pem")}
	if upstreamCAFile != "" {
		args = append(args, "--upstream-ca", upstreamCAFile)
	}
	return StartProxy(t, args...)
}

// TestInspectCurl: curl over HTTP/1.1 and HTTP/2, trusting the CA only through env --ca: the
// allowed GET gets the target's bytes, POST, PUT and DELETE get the 403 with the rule, each
// ambiguous path form gets 400, and none of the refused requests reaches the target. The access
// log has one record per request, linked to its tunnel's.
func TestInspectCurl(t *testing.T) {
	requireClient(t, "curl", "--version")
	u := newUpstreamCA(t)
	it := startInspectTarget(t, u)
	caDir := newInspectionCA(t)
	p := startInspectingProxy(t, it, caDir, u.file)
	env := agentEnvCA(t, "http://"+p.Addr, caDir)
	curl := func(args ...string) Result {
		t.Helper()
		return Run(t, env, "curl", append([]string{"-sS", "--max-time", "20", "--path-as-is"}, args...)...)
	}
	bodyFile := filepath.Join(t.TempDir(), "body")
	for _, v := range []struct{ flag, want string }{{"--http1.1", "1.1"}, {"--http2", "2"}} {
		r := curl(v.flag, "-o", bodyFile, "-w", "%{http_code} %{http_version}", "-D", "-", it.base+"/repos/myorg/tool")
		got, _ := os.ReadFile(bodyFile)
		if !strings.HasSuffix(r.Stdout, "200 "+v.want) || !bytes.Equal(got, apiBody) {
			t.Fatalf("curl %s GET: %q (exit %d, %s), body %d bytes", v.flag, r.Stdout, r.Code, r.Stderr, len(got))
		}
		if !strings.Contains(r.Stdout, "x-proto: HTTP/2.0") && !strings.Contains(r.Stdout, "X-Proto: HTTP/2.0") {
			t.Errorf("curl %s: the target was not reached over HTTP/2:\n%s", v.flag, r.Stdout)
		}
		for _, m := range []string{"POST", "PUT", "DELETE"} {
			r := curl(v.flag, "-X", m, "-d", "x", "-D", "-", it.base+"/repos/myorg/tool")
			if !strings.Contains(r.Stdout, " 403") || !strings.Contains(strings.ToLower(r.Stdout), "x-swarm-proxy-decision: deny; code=http_rule_not_matched; rule=agent-api") ||
				!strings.Contains(r.Stdout, m+" /repos/myorg/tool is not allowed by rule agent-api") {
				t.Errorf("curl %s %s:\n%s%s", v.flag, m, r.Stdout, r.Stderr)
			}
		}
	}
	before := len(it.served())
	for _, path := range []string{"/repos/myorg/../other", "/repos/myorg/./x", "/repos/myorg//x", "/repos/myorg/%2e%2e/other",
		"/repos/myorg%2F..%2Fother", "/repos/myorg/%5C..", "/repos/%6Dyorg/x", "/repos/myorg/a%00b", "/repos/myorg/a%0Ab", "/repos/myorg/..;/x"} {
		r := curl("-D", "-", "-o", "/dev/null", it.base+path)
		if !strings.Contains(r.Stdout, " 400") || !strings.Contains(strings.ToLower(r.Stdout), "code=ambiguous_path") {
			t.Errorf("GET %s:\n%s%s", path, r.Stdout, r.Stderr)
		}
	}
	// A raw backslash is sent by curl as it is, too.
	if r := curl("-D", "-", "-o", "/dev/null", it.base+`/repos/myorg/a\b`); !strings.Contains(r.Stdout, " 400") {
		t.Errorf("backslash:\n%s", r.Stdout)
	}
	if served := it.served(); len(served) != before {
		t.Errorf("the target served refused requests: %v", served[before:])
	}

	// A tunnel's record is written when the proxy sees the tunnel end, which may come after curl
	// exits: wait for one inspected CONNECT record per curl run above.
	const curlRuns = 2*4 + 11
	var recs []accesslog.Record
	tunnels := map[string]bool{}
	Eventually(t, fmt.Sprintf("%d inspected tunnel records", curlRuns), func() bool {
		recs = p.Records()
		clear(tunnels)
		for _, r := range recs {
			if r.Method == "CONNECT" && r.Inspected {
				tunnels[r.RequestID] = true
			}
		}
		return len(tunnels) >= curlRuns
	})
	n := 0
	for _, r := range recs {
		if r.Method == "CONNECT" {
			continue
		}
		n++
		if !r.Inspected || !tunnels[r.TunnelID] || r.Host != "localhost" || r.Path == "" || r.DurationMS <= 0 {
			t.Errorf("request record without its tunnel or fields: %+v", r)
		}
	}
	if n != curlRuns {
		t.Errorf("%d request records, want %d", n, curlRuns)
	}

	// policy generate --http turns the inspected records into http entries.
	log := WriteFile(t, "access.log", p.Stdout())
	r := Run(t, nil, binary, "policy", "generate", "--http", log)
	for _, want := range []string{"  - host: localhost\n", "    http:\n", `      - {methods: [GET, POST, PUT, DELETE], paths: ["/repos/myorg/tool"]}`} {
		if r.Code != 0 || !strings.Contains(r.Stdout, want) {
			t.Errorf("policy generate --http lacks %q: exit %d\n%s%s", want, r.Code, r.Stdout, r.Stderr)
		}
	}
	// The requests the rule refused are left out with --exclude-blocked.
	r2 := Run(t, nil, binary, "policy", "generate", "--http", "--exclude-blocked", log)
	if want := `      - {methods: [GET], paths: ["/repos/myorg/tool"]}`; !strings.Contains(r2.Stdout, want) {
		t.Errorf("policy generate --http --exclude-blocked lacks %q:\n%s%s", want, r2.Stdout, r2.Stderr)
	}
	if !strings.Contains(r.Stderr, "left out 11 inspected requests whose method or path no rule can match") {
		t.Errorf("policy generate --http: no note about the ambiguous paths: %s", r.Stderr)
	}
}

// TestInspectSDKClients: Python requests, Node, git, pip and npm, each trusting the CA only through
// the variables of env --ca, work against the inspected rule; what the rule does not allow fails.
func TestInspectSDKClients(t *testing.T) {
	u := newUpstreamCA(t)
	it := startInspectTarget(t, u)
	caDir := newInspectionCA(t)
	p := startInspectingProxy(t, it, caDir, u.file)
	env := agentEnvCA(t, "http://"+p.Addr, caDir)

	t.Run("python-requests", func(t *testing.T) {
		requireClient(t, "python3", "-c", "import requests")
		script := `import hashlib, os, requests
base = os.environ["BASE"]
g = requests.get(base + "/repos/myorg/tool")
p = requests.post(base + "/repos/myorg/tool", data=b"x")
print(g.status_code, hashlib.sha256(g.content).hexdigest(), p.status_code, p.headers.get("X-Swarm-Proxy-Decision", "")[:48])`
		r := Run(t, append(env, "BASE="+it.base), "python3", "-c", script)
		want := fmt.Sprintf("200 %s 403 deny; code=http_rule_not_matched; rule=agent-api", sha256Hex(apiBody))
		if strings.TrimSpace(r.Stdout) != want {
			t.Fatalf("python: %q, want %q\n%s", r.Stdout, want, r.Stderr)
		}
	})
	t.Run("node", func(t *testing.T) {
		requireClient(t, "node", "--version")
		r := Run(t, append(env, "BASE="+it.base), "node", "-e", nodeInspect)
		want := fmt.Sprintf("200 %s 403", sha256Hex(apiBody))
		if strings.TrimSpace(r.Stdout) != want {
			t.Fatalf("node: %q, want %q\n%s", r.Stdout, want, r.Stderr)
		}
	})
	t.Run("git", func(t *testing.T) {
		requireClient(t, "git", "--version")
		dir := filepath.Join(t.TempDir(), "clone")
		r := Run(t, env, "git", "clone", "-q", it.base+"/git/repo.git", dir)
		got, _ := os.ReadFile(filepath.Join(dir, "README"))
		if r.Code != 0 || string(got) != "inspected clone\n" {
			t.Fatalf("git clone: exit %d, README %q\n%s", r.Code, got, r.Stderr)
		}
		// A push is a POST to git-receive-pack, which the rule does not allow.
		os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644)
		gitEnv := append(env, "GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@example.com", "GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@example.com")
		Run(t, gitEnv, "git", "-C", dir, "add", "new")
		Run(t, gitEnv, "git", "-C", dir, "commit", "-q", "-m", "second")
		r = Run(t, gitEnv, "git", "-C", dir, "push", "-q", "origin", "main")
		if r.Code == 0 || !strings.Contains(r.Stderr, "403") {
			t.Fatalf("git push: exit %d\n%s", r.Code, r.Stderr)
		}
	})
	t.Run("pip", func(t *testing.T) {
		requireClient(t, "pip3", "--version")
		target := t.TempDir()
		r := Run(t, env, "pip3", "install", "--disable-pip-version-check", "--no-cache-dir", "--no-deps", "--target", target,
			"--index-url", it.base+"/simple/", "inspectdemo")
		got, _ := os.ReadFile(filepath.Join(target, "inspectdemo", "__init__.py"))
		if r.Code != 0 || !strings.Contains(string(got), "inspected proxy") {
			t.Fatalf("pip install: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
	})
	t.Run("npm", func(t *testing.T) {
		requireClient(t, "npm", "--version")
		prefix := t.TempDir()
		r := Run(t, append(env, "npm_config_registry="+it.base+"/npm/", "npm_config_cache="+t.TempDir(), "npm_config_update_notifier=false"),
			"npm", "install", "--no-audit", "--no-fund", "--prefix", prefix, "inspect-demo")
		got, _ := os.ReadFile(filepath.Join(prefix, "node_modules", "inspect-demo", "index.js"))
		if r.Code != 0 || !strings.Contains(string(got), "inspected proxy") {
			t.Fatalf("npm install: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
	})
	for _, r := range p.Records() {
		if r.Method != "CONNECT" && (!r.Inspected || r.Host != "localhost") {
			t.Errorf("record %+v", r)
		}
		if r.Status == 403 && r.Path != "/repos/myorg/tool" && r.Path != "/git/repo.git/git-receive-pack" && r.Path != "/git/repo.git/info/refs" {
			t.Errorf("refused: %+v", r)
		}
	}
}

// nodeInspect requests the API through the proxy with the variables env sets: fetch, where Node
// routes it through HTTPS_PROXY (24.5 and 22.21 onwards with NODE_USE_ENV_PROXY=1); on older Node,
// whose fetch ignores proxies, https over a CONNECT tunnel as proxy-aware SDKs do. Either way the
// CA is trusted only through NODE_EXTRA_CA_CERTS.
const nodeInspect = `
const http = require("http"), https = require("https"), crypto = require("crypto");
const [major, minor] = process.versions.node.split(".").map(Number);
const native = major > 24 || (major === 24 && minor >= 5) || (major === 22 && minor >= 21);
function viaTunnel(method, url, body) {
  const u = new URL(url), proxy = new URL(process.env.HTTPS_PROXY);
  return new Promise((resolve, reject) => {
    http.request({host: proxy.hostname, port: proxy.port, method: "CONNECT", path: u.host}).on("connect", (res, socket) => {
      const req = https.request({host: u.hostname, port: u.port, method, path: u.pathname, socket, agent: false, servername: u.hostname}, r => {
        const chunks = []; r.on("data", d => chunks.push(d)); r.on("end", () => { socket.destroy(); resolve([r.statusCode, Buffer.concat(chunks)]); });
      });
      req.on("error", reject); req.end(body);
    }).on("error", reject).end();
  });
}
async function call(method, url, body) {
  if (native) { const r = await fetch(url, {method, body}); return [r.status, Buffer.from(await r.arrayBuffer())]; }
  return viaTunnel(method, url, body);
}
(async () => {
  const [gs, gb] = await call("GET", process.env.BASE + "/repos/myorg/tool");
  const [ps] = await call("POST", process.env.BASE + "/repos/myorg/tool", "x");
  console.log(gs, crypto.createHash("sha256").update(gb).digest("hex"), ps);
})().catch(e => { console.error(e); process.exit(1); });
`

// TestInspectUnverifiableUpstream: without --upstream-ca the proxy cannot verify the target's
// certificate: the request gets 502 upstream_tls and nothing reaches the target.
func TestInspectUnverifiableUpstream(t *testing.T) {
	requireClient(t, "curl", "--version")
	u := newUpstreamCA(t)
	it := startInspectTarget(t, u)
	caDir := newInspectionCA(t)
	p := startInspectingProxy(t, it, caDir, "")
	env := agentEnvCA(t, "http://"+p.Addr, caDir)
	r := Run(t, env, "curl", "-sS", "--max-time", "20", "-D", "-", it.base+"/repos/myorg/tool")
	if !strings.Contains(r.Stdout, " 502") || !strings.Contains(strings.ToLower(r.Stdout), "x-swarm-proxy-error: upstream_tls; code=upstream_tls") ||
		!strings.Contains(r.Stdout, "certificate signed by unknown authority") {
		t.Fatalf("curl:\n%s%s", r.Stdout, r.Stderr)
	}
	if s := it.served(); len(s) != 0 {
		t.Fatalf("the target served %v", s)
	}
	rec := p.WaitRecord(func(r accesslog.Record) bool { return r.Path == "/repos/myorg/tool" })
	if rec.Error != accesslog.ErrorUpstreamTLS || rec.Status != 502 {
		t.Errorf("record %+v", rec)
	}
}

// TestInspectPassthroughRule: a rule without http stays passthrough: the client's TLS reaches the
// target, which presents its own certificate (one the agent's bundle does not trust).
func TestInspectPassthroughRule(t *testing.T) {
	requireClient(t, "curl", "--version")
	u := newUpstreamCA(t)
	it := startInspectTarget(t, u)
	caDir := newInspectionCA(t)
	p := startInspectingProxy(t, it, caDir, u.file)
	env := agentEnvCA(t, "http://"+p.Addr, caDir)
	direct, port := u.serve(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "direct "+r.Method) }))
	// Through the cidr rule (no http): the agent's bundle does not know the target's CA...
	r := Run(t, env, "curl", "-sS", "--max-time", "20", "https://127.0.0.1:"+port+"/x")
	if r.Code == 0 || !strings.Contains(r.Stderr, "certificate") {
		t.Fatalf("curl with the agent's bundle: exit %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
	// ...and with it, every method passes: the proxy decided the connection, not the requests.
	r = Run(t, env, "curl", "-sS", "--max-time", "20", "--cacert", u.file, "-X", "DELETE", "https://127.0.0.1:"+port+"/x")
	if r.Code != 0 || r.Stdout != "direct DELETE" {
		t.Fatalf("curl --cacert upstream: exit %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
	c, _ := OpenTunnel(t, p.Addr, "127.0.0.1:"+port)
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().PeerCertificates[0]; !got.Equal(direct.TLS.Certificates[0].Leaf) {
		t.Fatalf("the client saw %s, not the target's own certificate", got.Issuer)
	}
	tc.Close()
	rec := p.WaitRecord(func(r accesslog.Record) bool {
		return r.Method == "CONNECT" && r.Port != 0 && !r.Inspected && r.Status == 200
	})
	if rec.TunnelID != "" || rec.Rule != "test-loopback" {
		t.Errorf("passthrough record %+v", rec)
	}
}

// TestInspectBroker: in broker mode the broker inspects and the provider carries TLS to the target.
func TestInspectBroker(t *testing.T) {
	requireClient(t, "curl", "--version")
	u := newUpstreamCA(t)
	it := startInspectTarget(t, u)
	caDir := newInspectionCA(t)
	b := startBroker(t, "--policy", WriteFile(t, "policy.yaml", inspectPolicyFor(it.port)),
		"--ca-cert", filepath.Join(caDir, "ca.pem"), "--ca-key", filepath.Join(caDir, "ca-key.pem"), "--upstream-ca", u.file)
	ticketFile, tk := b.ticket("job-inspect", "1h")
	b.provider(ticketFile, tk["session_id"], 1)
	env := agentEnvCA(t, "http://"+b.Addr, caDir, "--ticket", ticketFile)
	bodyFile := filepath.Join(t.TempDir(), "body")
	r := Run(t, env, "curl", "-sS", "--max-time", "20", "-o", bodyFile, "-w", "%{http_code}", it.base+"/repos/myorg/tool")
	got, _ := os.ReadFile(bodyFile)
	if r.Stdout != "200" || !bytes.Equal(got, apiBody) {
		t.Fatalf("GET through the broker: %q %s, %d bytes", r.Stdout, r.Stderr, len(got))
	}
	r = Run(t, env, "curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", it.base+"/repos/myorg/tool")
	if r.Stdout != "403" {
		t.Fatalf("DELETE through the broker: %q %s", r.Stdout, r.Stderr)
	}
	rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Method == "GET" && r.Path == "/repos/myorg/tool" })
	if !rec.Inspected || rec.Session != tk["session_id"] || rec.Provider == "" || rec.TunnelID == "" {
		t.Errorf("broker record %+v", rec)
	}
}

// TestInspectDoctor: doctor, in the environment env --ca makes, finds that curl, Python, Node and git
// trust the CA; without those variables each check fails and names the variable to set.
func TestInspectDoctor(t *testing.T) {
	caDir := newInspectionCA(t)
	p := StartProxy(t)
	env := agentEnvCA(t, "http://"+p.Addr, caDir)
	r := Run(t, env, binary, "doctor", "--ca", filepath.Join(caDir, "ca.pem"))
	for _, tool := range []string{"curl", "python3", "node", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		if !strings.Contains(r.Stdout, "ok    trust "+tool+": ") {
			t.Errorf("doctor with env --ca: no ok for %s:\n%s", tool, r.Stdout)
		}
	}
	plain := Run(t, nil, binary, "env", "--proxy", "http://"+p.Addr, "--format", "json")
	var vars map[string]string
	json.Unmarshal([]byte(plain.Stdout), &vars)
	var bare []string
	for k, v := range vars {
		bare = append(bare, k+"="+v)
	}
	r = Run(t, bare, binary, "doctor", "--ca", filepath.Join(caDir, "ca.pem"))
	for tool, variable := range map[string]string{"curl": "CURL_CA_BUNDLE", "node": "NODE_EXTRA_CA_CERTS", "git": "GIT_SSL_CAINFO"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		if !strings.Contains(r.Stdout, "fail  trust "+tool+": ") || !strings.Contains(r.Stdout, variable) {
			t.Errorf("doctor without the variables: no failure naming %s for %s:\n%s", variable, tool, r.Stdout)
		}
	}
	if r.Code != 1 {
		t.Errorf("doctor with untrusting tools exited %d, want 1", r.Code)
	}
}
