// Package e2e runs the built swarm-proxy binary as processes against real clients (curl, ssh, git,
// pip, npm) and real servers on loopback. TestMain builds the binary once, with the race detector.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// binary is the swarm-proxy binary under test.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "swarm-proxy-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "swarm-proxy")
	build := exec.Command("go", "build", "-race", "-o", binary, "../../cmd/swarm-proxy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build swarm-proxy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitTimeout bounds every wait on a condition in these tests.
const waitTimeout = 20 * time.Second

// cleanEnv is the environment for child processes: no proxy variables leak in from the machine.
func cleanEnv(extra ...string) []string {
	// atexit_sleep_ms=0: race-built child processes exit at once instead of after a second.
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LANG=C", "GORACE=atexit_sleep_ms=0"}
	return append(env, extra...)
}

// Proc is a running swarm-proxy process.
type Proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	Addr   string // proxy listener, when the command has one
	Admin  string // admin listener, when the command has one
	fields map[string]string

	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	exited chan struct{}
	err    error
}

var listeningRE = regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`)

// Start runs the binary with args and waits until its stderr prints a line containing readyMsg
// (for example "proxy listening"); the key=value pairs of that line are available from Field.
// The process is killed when the test ends.
func Start(t *testing.T, readyMsg string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, exited: make(chan struct{}), fields: map[string]string{}}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = cleanEnv()
	outPipe, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	ready := make(chan map[string]string, 1)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(outPipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.stdout.Write(sc.Bytes())
			p.stdout.WriteByte('\n')
			p.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			if strings.Contains(line, readyMsg) {
				kv := map[string]string{}
				for _, m := range listeningRE.FindAllStringSubmatch(line, -1) {
					kv[m[1]] = strings.Trim(m[2], `"`)
				}
				select {
				case ready <- kv:
				default:
				}
			}
		}
	}()
	go func() {
		wg.Wait()
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		// The binary is built with -race: a race it hit fails the test that ran it.
		if strings.Contains(p.Stderr(), "WARNING: DATA RACE") {
			t.Errorf("the race detector reported a data race in %s %s", filepath.Base(binary), strings.Join(args, " "))
		}
		if t.Failed() {
			t.Logf("stderr of %s %s:\n%s", filepath.Base(binary), strings.Join(args, " "), p.Stderr())
		}
	})
	select {
	case kv := <-ready:
		p.fields = kv
		p.Addr, p.Admin = kv["addr"], kv["admin"]
	case <-p.exited:
		t.Fatalf("%v exited before it was ready (%v):\n%s", args, p.err, p.Stderr())
	case <-time.After(waitTimeout):
		t.Fatalf("%v not ready after %s:\n%s", args, waitTimeout, p.Stderr())
	}
	return p
}

// StartProxy runs `swarm-proxy proxy` on loopback ports chosen by the kernel, with args added.
func StartProxy(t *testing.T, args ...string) *Proc {
	t.Helper()
	base := []string{"proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--policy-poll", "100ms"}
	return Start(t, "proxy listening", append(base, args...)...)
}

// Field returns a key=value field of the readiness line.
func (p *Proc) Field(key string) string { return p.fields[key] }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stderr returns everything the process wrote to stderr so far.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// Stdout returns everything the process wrote to stdout so far.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// Records parses the access-log lines written to stdout so far.
func (p *Proc) Records() []accesslog.Record {
	p.t.Helper()
	return ParseRecords(p.t, p.Stdout())
}

// ParseRecords parses JSON lines, failing the test on a malformed line.
func ParseRecords(t *testing.T, s string) []accesslog.Record {
	t.Helper()
	var out []accesslog.Record
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var r accesslog.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("access log line is not JSON: %v\n%s", err, line)
		}
		out = append(out, r)
	}
	return out
}

// WaitRecord waits until an access-log record matching match has been written and returns it.
func (p *Proc) WaitRecord(match func(accesslog.Record) bool) accesslog.Record {
	p.t.Helper()
	var found accesslog.Record
	Eventually(p.t, "access log record", func() bool {
		for _, r := range p.Records() {
			if match(r) {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// WaitStderr waits until stderr contains s.
func (p *Proc) WaitStderr(s string) {
	p.t.Helper()
	Eventually(p.t, fmt.Sprintf("stderr to contain %q", s), func() bool { return strings.Contains(p.Stderr(), s) })
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(waitTimeout):
		p.t.Fatalf("process did not exit within %s", waitTimeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Eventually polls cond every 10 ms until it holds, failing the test after waitTimeout.
func Eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Result is a finished client command.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs a client program (curl, git, ...) with a clean environment plus env, bounded in time.
func Run(t *testing.T, env []string, name string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = cleanEnv(env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s: %v", name, err)
		}
		code = ee.ExitCode()
	}
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// Curl runs curl -sS with args.
func Curl(t *testing.T, args ...string) Result {
	t.Helper()
	return Run(t, nil, "curl", append([]string{"-sS", "--max-time", "20"}, args...)...)
}

// TLSServer starts an HTTPS server on loopback and writes its certificate to a file for clients'
// --cacert; the certificate is valid for 127.0.0.1 and example.com.
func TLSServer(t *testing.T, h http.Handler) (srv *httptest.Server, caFile string) {
	t.Helper()
	srv = httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return srv, caFile
}

// WriteFile writes content to name in a fresh temporary directory and returns its path.
func WriteFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// LoopbackPolicy is an enforce- or discovery-mode policy that allows loopback targets, which the
// tests' servers listen on (private and loopback addresses are otherwise refused).
func LoopbackPolicy(mode string, extra string) string {
	return fmt.Sprintf("mode: %s\nallow:\n  - cidr: 127.0.0.0/8\n    name: test-loopback\n%s", mode, extra)
}

// OpenTunnel opens a CONNECT tunnel through the proxy at proxyAddr to target and fails the test
// unless the proxy answers 200. The connection has a waitTimeout deadline; reads go through br,
// which may hold bytes read past the answer.
func OpenTunnel(t *testing.T, proxyAddr, target string) (c net.Conn, br *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitTimeout))
	br = bufio.NewReader(c)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	return c, br
}
