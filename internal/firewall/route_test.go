package firewall

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAgentUIDRanges(t *testing.T) {
	for _, tt := range []struct {
		allow []uint32
		want  [][2]uint32
	}{
		{[]uint32{65532}, [][2]uint32{{0, 65531}, {65533, maxUID}}},
		{[]uint32{0}, [][2]uint32{{1, maxUID}}},
		{[]uint32{maxUID}, [][2]uint32{{0, maxUID - 1}}},
		{[]uint32{5, 3, 4, 5}, [][2]uint32{{0, 2}, {6, maxUID}}},
		{[]uint32{1, 10}, [][2]uint32{{0, 0}, {2, 9}, {11, maxUID}}},
	} {
		if got := (Config{AllowUIDs: tt.allow}).agentUIDRanges(); !slices.Equal(got, tt.want) {
			t.Errorf("allow %v: ranges %v, want %v", tt.allow, got, tt.want)
		}
	}
}

var routeConfig = Config{AllowUIDs: []uint32{65532}, Capture: &Capture{ProxyPort: 15001, Route: true}}

func TestRouteRefused(t *testing.T) {
	err := Render(&strings.Builder{}, FormatNFTables, routeConfig)
	if err == nil || !strings.Contains(err.Error(), "--apply") {
		t.Errorf("Render with --capture-route: %v, want an error pointing to --apply", err)
	}
	withProxy := routeConfig
	withProxy.Proxy = []netip.AddrPort{netip.MustParseAddrPort("10.213.0.2:8080")}
	if _, err := Apply(context.Background(), FormatNFTables, withProxy, (&fakeRunner{}).run); err == nil || !strings.Contains(err.Error(), "--proxy") {
		t.Errorf("Apply with --capture-route and --proxy: %v, want a refusal naming --proxy", err)
	}
}

// TestApplyRouteCommands checks the ip(8) commands of the capture route with a recording runner:
// an earlier run's rules are deleted, the table gets the default route's device, one rule per uid
// range, and a family without a default route is reported, not failed.
func TestApplyRouteCommands(t *testing.T) {
	var calls []string
	deleted := 0
	run := func(_ context.Context, _ string, name string, args ...string) (string, error) {
		call := name + " " + strings.Join(args, " ")
		calls = append(calls, call)
		switch {
		case strings.Contains(call, "rule del"):
			if deleted++; deleted <= 2 { // two rules left by an earlier run, IPv4 only
				return "", nil
			}
			return "RTNETLINK answers: No such file or directory", errors.New("exit status 2")
		case call == "ip -4 route show default":
			return "default via 10.0.0.1 dev eth0 proto dhcp src 10.0.0.5 metric 100\n", nil
		}
		return "", nil
	}
	report, err := Apply(context.Background(), FormatNFTables, routeConfig, run)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"nft -f -",
		"ip -4 rule del pref 21328", "ip -4 rule del pref 21328", "ip -4 rule del pref 21328",
		"ip -4 route show default",
		"ip -4 route replace default dev eth0 mtu lock 65520 table 21328",
		"ip -4 rule add pref 21328 uidrange 0-65531 lookup 21328",
		"ip -4 rule add pref 21328 uidrange 65533-4294967294 lookup 21328",
		"ip -6 rule del pref 21328",
		"ip -6 route show default",
	}
	if !slices.Equal(calls, want) {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	all := strings.Join(report, "\n")
	for _, w := range []string{"ip -4: the agent's users (2 uid ranges, all but --allow-uid) route by table 21328: default dev eth0 mtu lock 65520", "ip -6: no default route"} {
		if !strings.Contains(all, w) {
			t.Errorf("report lacks %q:\n%s", w, all)
		}
	}
}

// TestCaptureRouteSegments shows what the capture route is for, in a namespace of the test's own:
// a connection redirected to the transparent port gets the segment size of the route its client
// dialed (1448 on a veth of MTU 1500) without it, and loopback-sized ones with it; applying twice leaves one
// copy of the rules.
func TestCaptureRouteSegments(t *testing.T) {
	requireRoot(t)
	inNewNetns(t, func() {
		for _, c := range [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"},
			{"ip", "addr", "add", "10.9.1.1/24", "dev", "v0"},
			{"ip", "link", "set", "v0", "up"},
			{"ip", "link", "set", "v1", "up"},
			{"ip", "route", "add", "default", "via", "10.9.1.2", "dev", "v0"},
		} {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				t.Errorf("%v: %v %s", c, err, out)
				return
			}
		}
		ln, err := net.Listen("tcp", "[::]:15001")
		if err != nil {
			t.Error(err)
			return
		}
		defer ln.Close()
		mss := func() int {
			c, err := net.DialTimeout("tcp", "10.9.1.80:443", 5*time.Second) // redirected; the namespace has no way out anyway
			if err != nil {
				t.Errorf("TCP to 10.9.1.80 was not redirected: %v", err)
				return 0
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Error(err)
				return 0
			}
			defer s.Close()
			raw, _ := c.(*net.TCPConn).SyscallConn()
			var v int
			raw.Control(func(fd uintptr) { v, err = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG) })
			if err != nil {
				t.Error(err)
			}
			return v
		}
		without := routeConfig
		without.Capture = &Capture{ProxyPort: 15001}
		if _, err := Apply(context.Background(), FormatNFTables, without, nil); err != nil {
			t.Errorf("apply: %v", err)
			return
		}
		if got := mss(); got > 1460 {
			t.Errorf("without the capture route the client's segment size is %d, want the veth's (at most 1460): the test no longer shows the problem", got)
		}
		for range 2 {
			if _, err := Apply(context.Background(), FormatNFTables, routeConfig, nil); err != nil {
				t.Errorf("apply: %v", err)
				return
			}
		}
		if got := mss(); got < 16<<10 { // TCP_MAXSEG is also bounded by half the peer's window at first
			t.Errorf("with the capture route the client's segment size is %d, want loopback-sized (at least 16 KiB)", got)
		}
		out, _ := exec.Command("ip", "-4", "rule", "show", "pref", "21328").CombinedOutput()
		if n := strings.Count(string(out), "lookup 21328"); n != 2 || strings.Contains(string(out), "65532-") || !strings.Contains(string(out), "0-65531") {
			t.Errorf("after two applies, rules of pref 21328:\n%s\nwant two, for uids 0-65531 and 65533-4294967294", out)
		}
		out, _ = exec.Command("ip", "-4", "route", "show", "table", "21328").CombinedOutput()
		if !strings.Contains(string(out), "default dev v0") || !strings.Contains(string(out), "mtu lock 65520") {
			t.Errorf("table 21328: %s, want the default route's device with mtu lock 65520", out)
		}
	})
}
