package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// readyTimeout bounds how long a started process may take to become ready.
const readyTimeout = 20 * time.Second

// proc is a process the benchmark started, in its own process group.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	output bytes.Buffer // stderr and stdout, for error messages
}

// startProc runs name with args in its own process group. When ready is non-nil, it waits until a line of
// stderr matches it and returns the first submatch.
func startProc(name string, ready *regexp.Regexp, args ...string) (*proc, string, error) {
	p := &proc{name: filepath.Base(name), exited: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LANG=C"}
	p.cmd.Stdout = io.Discard
	errPipe, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, "", fmt.Errorf("start %s: %w", p.name, err)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", p.name, err)
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if p.output.Len() < 64<<10 {
				p.output.WriteString(line + "\n")
			}
			p.mu.Unlock()
			if ready != nil {
				if m := ready.FindStringSubmatch(line); m != nil {
					v := ""
					if len(m) > 1 {
						v = m[1]
					}
					select {
					case found <- v:
					default:
					}
				}
			}
		}
		io.Copy(io.Discard, errPipe)
		p.cmd.Wait()
		close(p.exited)
	}()
	if ready == nil {
		return p, "", nil
	}
	select {
	case v := <-found:
		return p, v, nil
	case <-p.exited:
		return nil, "", fmt.Errorf("start %s: exited before it was ready:\n%s", p.name, p.log())
	case <-time.After(readyTimeout):
		p.stop()
		return nil, "", fmt.Errorf("start %s: not ready after %s:\n%s", p.name, readyTimeout, p.log())
	}
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// alive reports whether the process is still running.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after a grace period.
func (p *proc) stop() {
	if p == nil || !p.alive() {
		return
	}
	syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(3 * time.Second):
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.exited
	}
	// Children that left the group (none of ours do) would survive; the group kill covers sshd's
	// per-connection processes.
	syscall.Kill(-p.pid(), syscall.SIGKILL)
}

// startListening starts name with args, a program that listens on 127.0.0.1:port once it is ready,
// and waits for that; it returns the process and the address.
func startListening(ctx context.Context, port int, name string, args ...string) (*proc, string, error) {
	pr, _, err := startProc(name, nil, args...)
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitListening(ctx, addr, pr); err != nil {
		pr.stop()
		return nil, "", err
	}
	return pr, addr, nil
}

// waitListening polls addr until it accepts a TCP connection.
func waitListening(ctx context.Context, addr string, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited before listening on %s:\n%s", p.name, addr, p.log())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on %s after %s: %w", p.name, addr, readyTimeout, err)
		case <-time.After(time.Duration(min(i+1, 20)) * 5 * time.Millisecond):
		}
	}
}

// freePort returns a loopback port that was free a moment ago, for programs that cannot listen on
// port 0 and report the port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// treeRSS is the summed VmRSS, in bytes, of pid and all its descendants.
func treeRSS(pids ...int) (int64, error) {
	all, err := descendants(pids)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, pid := range all {
		rss, err := vmRSS(pid)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // exited meanwhile
			}
			return 0, err
		}
		total += rss
	}
	return total, nil
}

func vmRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read rss: parse %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, nil // a zombie has no VmRSS
}

// descendants returns roots and every process below them.
func descendants(roots []int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name may contain spaces; fields after the closing parenthesis are fixed.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	queue := append([]int(nil), roots...)
	for len(queue) > 0 && len(out) < 100000 {
		pid := queue[0]
		queue = queue[1:]
		out = append(out, pid)
		queue = append(queue, children[pid]...)
	}
	return out, nil
}

// tcpConnsTo counts the established TCP connections that process pid holds to remotePort. It
// counts socket inodes, not lines: /proc/net/tcp is read in chunks while the table changes, and a
// busy table can list one socket twice in one read.
func tcpConnsTo(pid, remotePort int) (int, error) {
	inodes := map[string]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("list fds: %w", err)
	}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	seen := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "01" || !inodes[fs[9]] {
				continue
			}
			_, port, ok := strings.Cut(fs[2], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseInt(port, 16, 32); err == nil && int(p) == remotePort {
				seen[fs[9]] = true
			}
		}
	}
	return len(seen), nil
}
