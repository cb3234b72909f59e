package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// transferSize is what each SSH bulk test moves in each direction.
const transferSize = 50 << 20

// transferTimeout bounds one bulk transfer: the binary under test is built with the race detector.
const transferTimeout = 3 * time.Minute

// needTools fails the test when a tool is missing under CI (the test script installs them) and
// skips it, saying why, elsewhere.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err == nil {
			continue
		}
		if _, err := os.Stat("/usr/sbin/" + tool); err == nil {
			continue
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (scripts/test.sh installs it)", tool)
		}
		t.Skipf("%s is not installed; run scripts/test.sh, which installs it", tool)
	}
}

// sshd is an OpenSSH server on a loopback port with a generated host key, accepting one generated
// user key for the current user.
type sshd struct {
	Port    int
	User    string
	Key     string // private key file for ssh -i
	workDir string
}

func startSSHD(t *testing.T) *sshd {
	t.Helper()
	needTools(t, "ssh", "sshd", "ssh-keygen")
	sshdPath, err := exec.LookPath("sshd")
	if err != nil {
		sshdPath = "/usr/sbin/sshd" // sshd must be started by its absolute path
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// The privilege separation directory that the package's service would create.
	if _, err := os.Stat("/run/sshd"); os.IsNotExist(err) && os.Getuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	s := &sshd{User: u.Username, Key: filepath.Join(dir, "user_key"), workDir: dir}
	for _, k := range []string{"host_key", "user_key"} {
		if r := Run(t, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)); r.Code != 0 {
			t.Fatalf("ssh-keygen: %s", r.Stderr)
		}
	}
	pub, err := os.ReadFile(s.Key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	// sshd takes a port number, not :0: pick a free one, and try again if another process took it
	// before sshd could bind it.
	for attempt := 1; ; attempt++ {
		s.Port = freePort(t)
		cfg := filepath.Join(dir, "sshd_config")
		conf := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s
PidFile none
UsePAM no
StrictModes no
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
`, s.Port, filepath.Join(dir, "host_key"), filepath.Join(dir, "authorized_keys"))
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if ok := s.run(t, sshdPath, cfg); ok {
			return s
		}
		if attempt == 3 {
			t.Fatal("sshd did not start after 3 attempts")
		}
	}
}

// run starts sshd and waits until it listens; it returns false when sshd exited first.
func (s *sshd) run(t *testing.T, path, cfg string) bool {
	t.Helper()
	cmd := exec.Command(path, "-D", "-e", "-f", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	var log strings.Builder
	ready := make(chan bool, 1)
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "Server listening on") {
				ready <- true
				signalled = true
			}
		}
		cmd.Wait()
		close(exited)
	}()
	select {
	case <-ready:
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		return true
	case <-exited:
		t.Logf("sshd exited before listening:\n%s", log.String())
		return false
	case <-time.After(waitTimeout):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("sshd not listening after %s:\n%s", waitTimeout, log.String())
		return false
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sshArgs are the ssh options of every test: this server's key, no known_hosts, no user config.
func (s *sshd) sshArgs(extra ...string) []string {
	args := []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-i", s.Key}
	return append(args, extra...)
}

// ssh runs ssh with args (ending with the destination and the remote command), stdin from in,
// stdout to out, bounded by transferTimeout.
func sshRun(t *testing.T, in io.Reader, out io.Writer, args ...string) (stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), transferTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Env = cleanEnv()
	var errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ssh %v: timed out after %s; stderr:\n%s", args, transferTimeout, errb.String())
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return errb.String(), ee.ExitCode()
		}
		t.Fatalf("ssh: %v", err)
	}
	return errb.String(), 0
}

// checkEcho runs `echo ok` over ssh with args and wants "ok".
func checkEcho(t *testing.T, s *sshd, args ...string) {
	t.Helper()
	var out bytes.Buffer
	stderr, code := sshRun(t, nil, &out, append(s.sshArgs(args...), s.User+"@127.0.0.1", "echo ok")...)
	if code != 0 || out.String() != "ok\n" {
		t.Fatalf("ssh echo ok: exit %d, stdout %q, stderr:\n%s", code, out.String(), stderr)
	}
}

// randomFile writes size random bytes to a temporary file and returns its path and SHA-256.
func randomFile(t *testing.T, size int64) (string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "payload")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path, hex.EncodeToString(h.Sum(nil))
}

// checkBulk sends transferSize bytes up (the server's sha256sum of stdin) and down (cat of a
// file, hashed here) over ssh with args and compares checksums.
func checkBulk(t *testing.T, s *sshd, args ...string) {
	t.Helper()
	payload, sum := randomFile(t, transferSize)
	dest := s.User + "@127.0.0.1"

	f, err := os.Open(payload)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	start := time.Now()
	stderr, code := sshRun(t, f, &out, append(s.sshArgs(args...), dest, "sha256sum")...)
	up := time.Since(start)
	if code != 0 {
		t.Fatalf("upload: ssh exit %d: %s", code, stderr)
	}
	if got, _, _ := strings.Cut(out.String(), " "); got != sum {
		t.Fatalf("upload: server's sha256 %q, sent %q", got, sum)
	}

	h := sha256.New()
	counted := &countWriter{w: h}
	start = time.Now()
	stderr, code = sshRun(t, nil, counted, append(s.sshArgs(args...), dest, "cat "+payload)...)
	down := time.Since(start)
	if code != 0 {
		t.Fatalf("download: ssh exit %d: %s", code, stderr)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum || counted.n != transferSize {
		t.Fatalf("download: got %d bytes with sha256 %s; want %d bytes with %s", counted.n, got, transferSize, sum)
	}
	t.Logf("%d MiB up in %s, down in %s, sha256 %s both ways", transferSize>>20, up.Round(time.Millisecond), down.Round(time.Millisecond), sum[:16])
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// sshRecord waits for the access-log record of a tunnel to the ssh server that moved at least
// out bytes towards it and in bytes back.
func sshRecord(p *Proc, method string, port int, out, in int64) accesslog.Record {
	return p.WaitRecord(func(r accesslog.Record) bool {
		return r.Method == method && r.Host == "127.0.0.1" && r.Port == port && r.Status == 200 &&
			r.Decision == accesslog.DecisionAllow && r.BytesOut >= out && r.BytesIn >= in
	})
}

// bulkRecords checks that the proxy logged both bulk transfers with their full size.
func bulkRecords(p *Proc, method string, port int) {
	sshRecord(p, method, port, transferSize, 1)
	sshRecord(p, method, port, 1, transferSize)
}

func TestSSHThroughConnect(t *testing.T) {
	s := startSSHD(t)
	px := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", "")))
	proxyCmd := fmt.Sprintf("ProxyCommand=%s connect --proxy http://%s %%h:%%p", binary, px.Addr)

	checkEcho(t, s, "-o", proxyCmd, "-p", strconv.Itoa(s.Port))
	rec := sshRecord(px, "CONNECT", s.Port, 1, 1)
	if rec.Rule != "test-loopback" || rec.Mode != "enforce" {
		t.Errorf("record %+v: want rule test-loopback in enforce mode", rec)
	}
	checkBulk(t, s, "-o", proxyCmd, "-p", strconv.Itoa(s.Port))
	bulkRecords(px, "CONNECT", s.Port)
}

func TestSSHThroughForward(t *testing.T) {
	s := startSSHD(t)
	px := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", "")))
	fw := Start(t, "forward listening", "forward", "--proxy", "http://"+px.Addr, fmt.Sprintf("127.0.0.1:0=127.0.0.1:%d", s.Port))
	_, port, err := net.SplitHostPort(fw.Field("local"))
	if err != nil {
		t.Fatalf("forward ready line has no local address: %v\n%s", err, fw.Stderr())
	}
	checkEcho(t, s, "-p", port)
	sshRecord(px, "CONNECT", s.Port, 1, 1)
	checkBulk(t, s, "-p", port)
	bulkRecords(px, "CONNECT", s.Port)
}

// TestSSHThroughForwardBroker is TestSSHThroughForward with a broker and a provider instead of a
// proxy: forward takes the broker and the credentials from the ticket.
func TestSSHThroughForwardBroker(t *testing.T) {
	s := startSSHD(t)
	b := startBroker(t)
	ticketFile, tk := b.ticket("ssh-forward", "1h")
	b.provider(ticketFile, tk["session_id"], 1, "--allow-targets", "loopback")
	fw := Start(t, "forward listening", "forward", "--ticket", ticketFile, fmt.Sprintf("127.0.0.1:0=127.0.0.1:%d", s.Port))
	_, port, err := net.SplitHostPort(fw.Field("local"))
	if err != nil {
		t.Fatalf("forward ready line has no local address: %v\n%s", err, fw.Stderr())
	}
	checkEcho(t, s, "-p", port)
	rec := sshRecord(b.Proc, "CONNECT", s.Port, 1, 1)
	if rec.Session != "ssh-forward" || rec.Provider == "" {
		t.Errorf("record %+v: want session ssh-forward and a provider", rec)
	}
	checkBulk(t, s, "-p", port)
	bulkRecords(b.Proc, "CONNECT", s.Port)
}

func TestSSHThroughBroker(t *testing.T) {
	s := startSSHD(t)
	b := startBroker(t)
	ticketFile, tk := b.ticket("ssh-session", "1h")
	b.provider(ticketFile, tk["session_id"], 1, "--allow-targets", "loopback")
	proxyCmd := fmt.Sprintf("ProxyCommand=%s connect --ticket %s %%h:%%p", binary, ticketFile)

	checkEcho(t, s, "-o", proxyCmd, "-p", strconv.Itoa(s.Port))
	rec := sshRecord(b.Proc, "CONNECT", s.Port, 1, 1)
	if rec.Session != "ssh-session" || rec.Provider == "" {
		t.Errorf("record %+v: want session ssh-session and a provider", rec)
	}
	checkBulk(t, s, "-o", proxyCmd, "-p", strconv.Itoa(s.Port))
	bulkRecords(b.Proc, "CONNECT", s.Port)
}
