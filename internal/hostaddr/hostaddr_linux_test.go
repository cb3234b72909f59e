package hostaddr

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireRoot skips unless the test can make network namespaces, except under CI.
func requireRoot(t *testing.T) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "making a network namespace needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "ip is not installed (scripts/test.sh installs iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s, and CI is set: this test must run in CI", why)
	}
	t.Skip(why)
}

func run(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestOwnsFollowsInterfaceChanges adds and removes addresses on an interface in a network
// namespace of the test's own, and checks that Set sees each change at once, long before MaxAge:
// the netlink feed, not the timer, makes it read the list again.
func TestOwnsFollowsInterfaceChanges(t *testing.T) {
	requireRoot(t)
	ns := fmt.Sprintf("sph-%d", os.Getpid())
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	// A veth pair with both ends in the namespace: dummy interfaces need a kernel module that
	// containers may lack. Nothing is routed out of the namespace.
	run(t, "ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	run(t, "ip", "-n", ns, "link", "set", "d0", "up")
	run(t, "ip", "-n", ns, "addr", "add", "192.31.196.1/24", "dev", "d0")

	// The Set's sockets are opened on this goroutine's thread, moved into the namespace; the
	// thread is not given back (no UnlockOSThread), so it dies with the test's goroutine.
	runtime.LockOSThread()
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns: %v", err)
	}

	s := &Set{MaxAge: time.Hour}
	own := func(a string) bool { return s.Owns(netip.MustParseAddr(a)) }
	if !own("192.31.196.1") || own("192.31.196.2") {
		t.Fatalf("first read: Owns(192.31.196.1) = %v, Owns(192.31.196.2) = %v", own("192.31.196.1"), own("192.31.196.2"))
	}
	if s.changes == nil {
		t.Fatal("no netlink change feed")
	}
	run(t, "ip", "-n", ns, "addr", "add", "2001:4:112::5/64", "dev", "d0", "nodad")
	run(t, "ip", "-n", ns, "addr", "add", "192.31.196.2/32", "dev", "d0")
	if !own("2001:4:112::5") || !own("192.31.196.2") {
		t.Error("addresses added after the first read are not seen")
	}
	run(t, "ip", "-n", ns, "addr", "del", "192.31.196.1/24", "dev", "d0")
	if own("192.31.196.1") {
		t.Error("a removed address is still seen")
	}
}
