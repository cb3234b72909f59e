package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// localhostCert is a self-signed certificate for localhost (certFor), and the PEM file of it that the
// proxy is given with --upstream-ca.
func localhostCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	cert, pemBytes := selfSigned(t, "localhost")
	file := filepath.Join(t.TempDir(), "upstream.pem")
	if err := os.WriteFile(file, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return cert, file
}

// agentCAArgs are the env arguments that make the agent's tools trust the inspection CA in caDir,
// with a bundle written by "swarm-proxy ca bundle".
func agentCAArgs(t *testing.T, caDir string) []string {
	t.Helper()
	ca, bundle := filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca-bundle.pem")
	if r := Run(t, nil, binary, "ca", "bundle", "--ca", ca, "--out", bundle); r.Code != 0 {
		t.Fatalf("ca bundle: exit %d: %s", r.Code, r.Stderr)
	}
	return []string{"--ca", ca, "--ca-bundle", bundle}
}

// TestSecretsInspectedHTTPS: over HTTPS that the proxy inspects, the upstream receives the value and
// the agent (curl trusting the proxy's CA) receives none; a placeholder to another inspected host is
// refused and that host receives nothing; records are marked inspected and name the secrets. curl
// speaks HTTP/2 to the proxy here: the trailer is redacted on that path too.
func TestSecretsInspectedHTTPS(t *testing.T) {
	gh := secretValue(t, "ghp_")
	cert, upstreamCA := localhostCert(t)
	bound, llm, missing, other := newRecorder(t, &cert), newRecorder(t, &cert), newRecorder(t, &cert), newRecorder(t, &cert)
	dir := t.TempDir()
	secretsFile := filepath.Join(dir, "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf("github:\n  value: %q\n  placeholder_env: GITHUB_TOKEN\n", gh))
	pol := secretsPolicy(bound, llm, missing) + fmt.Sprintf("  - host: localhost\n    ports: [%d]\n    name: other-inspected\n    inspect: true\n", other.port())
	caFlags, caDir := inspectionCADir(t)
	logFile := filepath.Join(dir, "access.log")
	p := StartProxy(t, append(caFlags, "--policy", WriteFile(t, "policy.yaml", pol), "--secrets", secretsFile, "--upstream-ca", upstreamCA, "--log-file", logFile)...)
	env := agentEnvArgs(t, append(agentCAArgs(t, caDir), "--proxy", "http://"+p.Addr, "--secrets", secretsFile), gh)

	r := Run(t, env, "sh", "-c", `curl -sS -D - -H "Authorization: token $GITHUB_TOKEN" "`+bound.url()+`/user?access_token=$GITHUB_TOKEN"`)
	noValue(t, "what the agent received", r.Stdout+r.Stderr, gh)
	seen := bound.requests()
	if !strings.Contains(r.Stdout, "\nHTTP/2 200") || !strings.Contains(r.Stdout, "x-echo-authorization: [redacted]") || !strings.Contains(r.Stdout, "x-echo-trailer: [redacted]") || len(seen) != 1 ||
		seen[0].Header.Get("Authorization") != "Bearer "+gh || seen[0].URI != "/user?access_token="+gh {
		t.Fatalf("inspected bound request: %+v\nupstream saw %+v", r, seen)
	}
	for _, script := range []string{
		`curl -sS -D - -H "Authorization: Bearer $GITHUB_TOKEN" ` + other.url() + `/steal`,
		`curl -sS -D - "` + other.url() + `/steal?t=$GITHUB_TOKEN"`,
	} {
		r := Run(t, env, "sh", "-c", script)
		if !strings.Contains(r.Stdout, "403") || !strings.Contains(r.Stdout, "code=secret_not_bound") {
			t.Errorf("%s: want 403 secret_not_bound, got %+v", script, r)
		}
	}
	if n := len(other.requests()); n != 0 {
		t.Errorf("the unbound inspected host received %d requests", n)
	}

	recs := func() []accesslog.Record {
		data, _ := os.ReadFile(logFile)
		return ParseRecords(t, string(data))
	}
	Eventually(t, "the inspected records", func() bool {
		n := 0
		for _, rec := range recs() {
			if rec.Inspected && rec.Method != "CONNECT" {
				n++
			}
		}
		return n >= 3
	})
	for _, rec := range recs() {
		switch {
		case rec.Path == "/user" && (!rec.Inspected || !slices.Equal(rec.Secrets, []string{"github"}) || rec.TunnelID == ""):
			t.Errorf("record %+v: want inspected, in a tunnel, secrets [github]", rec)
		case rec.Path == "/steal" && rec.Error != accesslog.ErrorSecretNotBound:
			t.Errorf("record %+v: want secret_not_bound", rec)
		}
	}
	_, metrics := httpGet(t, "http://"+p.Admin+"/metrics")
	logData, _ := os.ReadFile(logFile)
	for what, s := range map[string]string{"access log": string(logData), "stderr": p.Stderr(), "stdout": p.Stdout(), "/metrics": metrics} {
		noValue(t, what, s, gh)
	}
}

// tapRelay is a TCP relay to target that keeps every byte it carries in both directions: what a
// provider (or anything between the proxy and the upstream) could read.
func tapRelay(t *testing.T, target string) (addr string, seen func() []byte) {
	t.Helper()
	var mu sync.Mutex
	var buf []byte
	tap := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		buf = append(buf, p...)
		mu.Unlock()
		return len(p), nil
	})
	ln := loopbacktest.Start(t, func(c net.Conn) {
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() { io.Copy(io.MultiWriter(up, tap), c); up.(*net.TCPConn).CloseWrite(); close(done) }()
		io.Copy(io.MultiWriter(c, tap), up)
		<-done
	})
	return ln.Addr().String(), func() []byte {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(buf)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestSecretsBrokerInspectedHTTPS: the broker holds the secret and inspects; the provider carries the
// TLS stream to the upstream. A tap between the provider and the upstream sees bytes, but never the
// value, which the upstream receives.
func TestSecretsBrokerInspectedHTTPS(t *testing.T) {
	gh := secretValue(t, "ghp_")
	cert, upstreamCA := localhostCert(t)
	up := newRecorder(t, &cert)
	tapAddr, tapped := tapRelay(t, up.srv.Listener.Addr().String())
	_, tapPort, _ := net.SplitHostPort(tapAddr)
	secretsFile := filepath.Join(t.TempDir(), "secrets.yaml")
	writePrivate(t, secretsFile, fmt.Sprintf("github:\n  value: %q\n  placeholder_env: GITHUB_TOKEN\n", gh))
	pol := WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", fmt.Sprintf(`  - host: localhost
    ports: [%s]
    inject: [{header: Authorization, value: "Bearer {{secret:github}}"}]
    secrets: [github]
`, tapPort)))
	caFlags, caDir := inspectionCADir(t)
	b := startBroker(t, append(caFlags, "--policy", pol, "--secrets", secretsFile, "--upstream-ca", upstreamCA)...)
	tf, tk := b.ticket("secrets-tls", "1h")
	prov := b.provider(tf, "secrets-tls", 1)

	r := Curl(t, "-D", "-", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "--cacert", filepath.Join(caDir, "ca.pem"),
		"-H", "Authorization: token swarm-proxy-secret:github", "https://localhost:"+tapPort+"/user")
	noValue(t, "what the worker received", r.Stdout+r.Stderr, gh)
	if seen := up.requests(); !strings.Contains(r.Stdout, "200") || len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+gh {
		t.Fatalf("through the broker: %+v; upstream saw %+v", r, seen)
	}
	wire := tapped()
	if len(wire) < 1000 || !strings.Contains(string(wire), "localhost") {
		t.Fatalf("the tap saw %d bytes without the TLS handshake's server name: it is not on the path", len(wire))
	}
	noValue(t, "the bytes between the provider and the upstream", string(wire), gh)
	rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Path == "/user" })
	if !slices.Equal(rec.Secrets, []string{"github"}) || !rec.Inspected || rec.Session != "secrets-tls" {
		t.Errorf("broker record %+v", rec)
	}
	for what, s := range map[string]string{"broker stderr": b.Stderr(), "broker log": b.Stdout(), "provider stderr": prov.Stderr(), "provider stdout": prov.Stdout()} {
		noValue(t, what, s, gh)
	}
}
