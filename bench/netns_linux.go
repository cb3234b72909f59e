package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The namespace pair of the ns-connect and ns-transparent paths: the benchmark's clients dial from
// an agent namespace where swarm-proxy runs beside them as its own user (a sidecar) with `swarm-proxy
// firewall --transparent` applied, and the upstream servers run in a target namespace behind a veth
// pair. ns-connect goes through the proxy's explicit CONNECT, ns-transparent dials the target and is
// redirected to the transparent listener: the same hop, the same namespaces, only the way in differs.
// The rules are applied with --capture-route, as docs/agents.md recommends.
// No packet leaves the two namespaces.
const (
	nsAgentIP       = "10.214.0.1"
	nsTargetIP      = "10.214.0.2"
	nsProxyUID      = 65532
	nsTransparentAt = 15001
	nsPolicy        = "mode: enforce\nallow:\n  - name: bench-target\n    cidr: 10.214.0.0/24\n"
)

// nsPair is the shared namespace pair, made for the first path that needs it and removed with the
// last.
type nsPair struct {
	agent, target string
	up            *upstream
	users         int
}

var (
	nsMu     sync.Mutex
	nsShared *nsPair
)

// acquireNS returns the namespace pair, making it when needed.
func acquireNS(e env) (*nsPair, error) {
	nsMu.Lock()
	defer nsMu.Unlock()
	if nsShared != nil {
		nsShared.users++
		return nsShared, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: network namespaces need root", errNotInstalled)
	}
	for _, tool := range []string{"ip", "nft", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s", errNotInstalled, tool)
		}
	}
	id := strconv.Itoa(os.Getpid())
	n := &nsPair{agent: "spbench-a-" + id, target: "spbench-t-" + id, users: 1}
	fail := func(err error) (*nsPair, error) {
		n.remove()
		return nil, err
	}
	va, vt := "vba"+id, "vbt"+id
	if len(va) > 15 {
		va, vt = va[:15], vt[:15]
	}
	for _, args := range [][]string{
		{"netns", "add", n.agent}, {"netns", "add", n.target},
		{"link", "add", va, "netns", n.agent, "type", "veth", "peer", "name", vt, "netns", n.target},
		{"-n", n.agent, "addr", "add", nsAgentIP + "/24", "dev", va},
		{"-n", n.target, "addr", "add", nsTargetIP + "/24", "dev", vt},
		{"-n", n.agent, "link", "set", va, "up"}, {"-n", n.agent, "link", "set", "lo", "up"},
		{"-n", n.target, "link", "set", vt, "up"}, {"-n", n.target, "link", "set", "lo", "up"},
		// A pod's way out, as --capture-route reads it: the agent namespace's default route.
		{"-n", n.agent, "route", "add", "default", "via", nsTargetIP, "dev", va},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("ip %v: %w: %s", args, err, out))
		}
	}
	out, err := exec.Command("ip", "netns", "exec", n.agent, e.binary, "firewall", "--transparent",
		"--proxy-port", strconv.Itoa(nsTransparentAt), "--allow-uid", strconv.Itoa(nsProxyUID), "--capture-route", "--format", "nftables", "--apply").CombinedOutput()
	if err != nil {
		return fail(fmt.Errorf("firewall --transparent --apply: %w: %s", err, out))
	}
	if err := inNetns(n.target, func() error {
		n.up, err = startUpstreamOn(nsTargetIP)
		return err
	}); err != nil {
		return fail(err)
	}
	nsShared = n
	return n, nil
}

func (n *nsPair) release() {
	nsMu.Lock()
	defer nsMu.Unlock()
	if n.users--; n.users == 0 {
		n.remove()
		nsShared = nil
	}
}

func (n *nsPair) remove() {
	if n.up != nil {
		n.up.close()
	}
	for _, ns := range []string{n.agent, n.target} {
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// inNetns runs fn on a thread in namespace ns; sockets it opens stay there.
func inNetns(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread cannot go back: keep it locked so that it dies with this goroutine.
		runtime.LockOSThread()
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err))
	}
	return ferr
}

// netnsPath runs `swarm-proxy proxy` in the agent namespace as its own user; transparent chooses
// how the clients reach it.
func netnsPath(ctx context.Context, e env, transparent bool) (*path, error) {
	n, err := acquireNS(e)
	if err != nil {
		return nil, err
	}
	name, dir := "ns-connect", filepath.Join(e.dir, "ns-connect")
	if transparent {
		name, dir = "ns-transparent", filepath.Join(e.dir, "ns-transparent")
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		n.release()
		return nil, err
	}
	os.Chmod(dir, 0o777) // the proxy's user writes its log here
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(nsPolicy), 0o644); err != nil {
		n.release()
		return nil, err
	}
	uid := strconv.Itoa(nsProxyUID)
	args := []string{"netns", "exec", n.agent, "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", e.binary,
		"proxy", "--listen", "127.0.0.1:0", "--admin-listen", "", "--policy", pol, "--policy-poll", "0",
		"--log-file", filepath.Join(dir, "access.log")}
	if transparent {
		args = append(args, "--transparent-listen", fmt.Sprintf("[::]:%d", nsTransparentAt))
	}
	pr, addr, err := startProc("ip", listeningRE, args...)
	if err != nil {
		n.release()
		return nil, err
	}
	var d net.Dialer
	direct := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = inNetns(n.agent, func() error {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	p := &path{name: name, pids: []int{pr.pid()}, procs: []*proc{pr}, up: n.up, release: n.release}
	if transparent {
		p.dial = func(ctx context.Context, addr string) (net.Conn, error) { return direct(ctx, "tcp", addr) }
	} else {
		// No proxyURL: plain HTTP goes through a CONNECT tunnel too, as the proxy's 127.0.0.1 is the
		// agent namespace's.
		p.dial = connectDialerVia(direct, addr, "")
	}
	return p, nil
}
