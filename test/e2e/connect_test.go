package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// runConnect runs `swarm-proxy connect args...` with stdin.
func runConnect(t *testing.T, stdin string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"connect"}, args...)...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("connect %v: timed out; stderr:\n%s", args, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

func TestConnectHalfClose(t *testing.T) {
	target := halfCloseServer(t)
	_, port := hostPort(t, target)
	px := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", "")))
	px2 := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", ""))) // its own log
	b := startBroker(t)
	ticketFile, tk := b.ticket("connect-session", "1h")
	b.provider(ticketFile, tk["session_id"], 1)
	cases := []struct {
		name    string
		args    []string
		log     *Proc
		session string
	}{
		{"proxy", []string{"--proxy", "http://" + px.Addr}, px, ""},
		{"proxy as HOST:PORT", []string{"--proxy", px2.Addr}, px2, ""},
		{"broker", []string{"--ticket", ticketFile}, b.Proc, "connect-session"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The server answers only after it read EOF: connect must half-close, not close.
			r := runConnect(t, "hello over "+c.name, append(c.args, target)...)
			if r.Code != 0 || r.Stdout != "got:hello over "+c.name {
				t.Fatalf("connect: exit %d, stdout %q, stderr %s", r.Code, r.Stdout, r.Stderr)
			}
			rec := c.log.WaitRecord(func(r accesslog.Record) bool { return r.Method == "CONNECT" && r.Port == port })
			if rec.Status != 200 || rec.Session != c.session || rec.BytesOut != int64(len("hello over "+c.name)) {
				t.Fatalf("record %+v", rec)
			}
		})
	}
}

func TestConnectErrors(t *testing.T) {
	px := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", "deny:\n  - host: blocked.example\n    name: test-deny\n")))
	// The broker lets the documentation range through so that the provider is the one refusing it.
	brokerPolicy := WriteFile(t, "broker.yaml", LoopbackPolicy("discovery", "  - cidr: 192.0.2.0/24\n    name: test-net\n"))
	b := startBroker(t, "--policy", brokerPolicy)
	ticketFile, tk := b.ticket("loop-session", "1h")
	b.provider(ticketFile, tk["session_id"], 1, "--allow-targets", "loopback")
	badToken := WriteFile(t, "bad.json", fmt.Sprintf(`{"session_id":%q,"token":%q,"broker_addr":%q,"expires_at":%q}`,
		tk["session_id"], tk["token"]+"x", tk["broker_addr"], tk["expires_at"]))
	expired := WriteFile(t, "expired.json", fmt.Sprintf(`{"session_id":%q,"token":%q,"broker_addr":%q,"expires_at":"2020-01-01T00:00:00Z"}`,
		tk["session_id"], tk["token"], tk["broker_addr"]))
	orphanTicket, _ := b.ticket("no-provider-session", "1h")
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	viaProxy := []string{"--proxy", "http://" + px.Addr}

	cases := []struct {
		name string
		args []string
		want []string // substrings of the one stderr line
	}{
		{"blocked by rule", append(viaProxy, "blocked.example:22"), []string{"blocked by the proxy (403)", "denied by rule test-deny", "fix:"}},
		{"private address", append(viaProxy, "10.20.30.40:22"), []string{"blocked by the proxy (403)", "10.20.30.40 is a private address"}},
		{"target refused", append(viaProxy, closed), []string{"could not reach the target (502)", "connection refused"}},
		{"proxy down", []string{"--proxy", "http://" + closed, "127.0.0.1:22"}, []string{"cannot use the proxy", "connection refused"}},
		{"wrong token", []string{"--ticket", badToken, "127.0.0.1:22"}, []string{"proxy authentication failed (407)", "token"}},
		{"expired ticket", []string{"--ticket", expired, "127.0.0.1:22"}, []string{"token has expired at 2020-01-01"}},
		{"no provider", []string{"--ticket", orphanTicket, "127.0.0.1:22"}, []string{"(502)", "no-provider-session"}},
		{"provider refuses non-loopback", []string{"--ticket", ticketFile, "192.0.2.1:22"}, []string{"blocked by the proxy (403)", "192.0.2.1"}},
		{"no way given", []string{"127.0.0.1:22"}, []string{"--ticket FILE (broker) or --proxy"}},
		{"bad target", append(viaProxy, "no-port"), []string{"want HOST:PORT"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runConnect(t, "", c.args...)
			lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
			if r.Code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "swarm-proxy: ") {
				t.Fatalf("exit %d, stderr %q: want a non-zero exit and one line", r.Code, r.Stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(lines[0], w) {
					t.Fatalf("stderr %q does not say %q", lines[0], w)
				}
			}
			t.Logf("%s", lines[0])
		})
	}
	// The provider's refusal is in the broker's log with the provider's reason.
	rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Host == "192.0.2.1" })
	if rec.Status != 403 || rec.Decision != accesslog.DecisionDeny || rec.Reason == "" {
		t.Fatalf("broker record %+v: want a 403 denial with the provider's reason", rec)
	}
}

var forwardReadyRE = regexp.MustCompile(`msg="forward listening" local=(\S+) target=(\S+)`)

func TestForwardSeveral(t *testing.T) {
	px := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", "")))
	a, b := halfCloseServer(t), halfCloseServer(t)
	fw := Start(t, "forward listening", "forward", "--proxy", "http://"+px.Addr,
		"127.0.0.1:0="+a, "127.0.0.1:0="+b, "127.0.0.1:0=10.20.30.40:5432")
	listeners := map[string]string{} // target -> local
	Eventually(t, "three forward listening lines", func() bool {
		for _, m := range forwardReadyRE.FindAllStringSubmatch(fw.Stderr(), -1) {
			listeners[m[2]] = m[1]
		}
		return len(listeners) == 3
	})
	for _, target := range []string{a, b} {
		t.Run(target, func(t *testing.T) {
			c, err := net.Dial("tcp", listeners[target])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(waitTimeout))
			io.WriteString(c, "to "+target)
			c.(*net.TCPConn).CloseWrite()
			if got, err := io.ReadAll(c); err != nil || string(got) != "got:to "+target {
				t.Fatalf("read %q, %v", got, err)
			}
		})
	}
	t.Run("blocked", func(t *testing.T) {
		// The forward resets the connection it cannot open; the reset can arrive before the dial
		// has returned, so a dial that fails with it is a refusal too.
		c, err := net.Dial("tcp", listeners["10.20.30.40:5432"])
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
		if err == nil {
			defer c.Close()
			c.SetDeadline(time.Now().Add(waitTimeout))
			if n, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatalf("read %d bytes from a forward the proxy blocked", n)
			}
		}
		fw.WaitStderr("blocked by the proxy (403)")
	})
	fw.Signal(syscall.SIGTERM)
	if code := fw.Wait(); code != 0 {
		t.Fatalf("forward exited %d after SIGTERM:\n%s", code, fw.Stderr())
	}
	if !strings.Contains(fw.Stderr(), "stopped") {
		t.Fatalf("no graceful stop in:\n%s", fw.Stderr())
	}
}

func TestForwardUsage(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no forwards", []string{"--proxy", "http://127.0.0.1:1"}, "at least one LOCAL_ADDR=HOST:PORT"},
		{"no equals", []string{"--proxy", "http://127.0.0.1:1", "127.0.0.1:22"}, "want LOCAL_ADDR=HOST:PORT"},
		{"both ways", []string{"--proxy", "http://127.0.0.1:1", "--ticket", "t.json", "0=127.0.0.1:22"}, "not both"},
		{"bad proxy", []string{"--proxy", "socks5://127.0.0.1:1", "0=127.0.0.1:22"}, "scheme must be http"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Run(t, nil, binary, append([]string{"forward"}, c.args...)...)
			if r.Code == 0 || !strings.Contains(r.Stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want an error saying %q", r.Code, r.Stderr, c.want)
			}
		})
	}
}
