package transparent

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// requireRoot skips a test that needs root on Linux, except under CI, where it must not be skipped.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("nft"); err == nil {
			return
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root and nft (to redirect in a network namespace of its own) and CI is set: it must run, not skip")
	}
	t.Skip("needs root and nft to make a network namespace with a redirect")
}

// TestOriginalDst redirects connections to addresses that exist nowhere, IPv4 and IPv6, to a
// listener in an network namespace of the test's own with one veth pair and nothing behind it, and reads their original destination.
func TestOriginalDst(t *testing.T) {
	requireRoot(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine, namespace and all
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		ln, err := net.Listen("tcp", "[::]:0")
		if err != nil {
			t.Error(err)
			return
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		rules := `table inet t {
	chain output {
		type nat hook output priority -100;
		ip daddr 10.9.0.2 tcp dport 443 redirect to :PORT
		ip6 daddr fd00:9::2 tcp dport 8443 redirect to :PORT
	}
}
`
		for _, c := range [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"},
			{"ip", "link", "set", "d1", "up"},
			{"ip", "addr", "add", "10.9.0.1/24", "dev", "d0"},
			{"ip", "addr", "add", "fd00:9::1/64", "dev", "d0", "nodad"},
			{"ip", "link", "set", "d0", "up"},
		} {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				t.Errorf("%v: %v %s", c, err, out)
				return
			}
		}
		nft := exec.Command("nft", "-f", "-")
		nft.Stdin = strings.NewReader(strings.ReplaceAll(rules, "PORT", strconv.Itoa(port)))
		if out, err := nft.CombinedOutput(); err != nil {
			t.Errorf("nft: %v %s", err, out)
			return
		}
		for _, dst := range []string{"10.9.0.2:443", "[fd00:9::2]:8443"} {
			c, err := net.Dial("tcp", dst)
			if err != nil {
				t.Errorf("dial %s: %v", dst, err)
				continue
			}
			s, err := ln.Accept()
			if err != nil {
				c.Close()
				t.Error(err)
				return
			}
			got, err := OriginalDst(s)
			if err != nil || got != netip.MustParseAddrPort(dst) {
				t.Errorf("OriginalDst of a connection to %s (local %s) = %v, %v", dst, s.LocalAddr(), got, err)
			}
			c.Close()
			s.Close()
		}
	}()
	<-done
}
