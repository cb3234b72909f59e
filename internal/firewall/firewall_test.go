package firewall

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var testConfig = Config{
	Proxy:     []netip.AddrPort{netip.MustParseAddrPort("10.213.0.2:8080"), netip.MustParseAddrPort("[fd00:213::2]:8080")},
	Names:     map[netip.Addr]string{netip.MustParseAddr("10.213.0.2"): "proxy", netip.MustParseAddr("fd00:213::2"): "proxy"},
	DNS:       []netip.Addr{netip.MustParseAddr("10.213.0.53")},
	AllowUIDs: []uint32{65532},
}

func TestRender(t *testing.T) {
	v4only := Config{Proxy: []netip.AddrPort{netip.MustParseAddrPort("10.213.0.2:8080")}}
	withAdmin := testConfig
	withAdmin.AdminPorts = []uint16{9090}
	tests := []struct {
		name    string
		format  Format
		cfg     Config
		want    []string
		notWant []string
	}{
		{"iptables", FormatIPTables, testConfig, []string{
			"iptables-restore --noflush <<'EOF'\n*filter\n:SWARM-PROXY-EGRESS - [0:0]\n",
			`-A SWARM-PROXY-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "replies to connections already allowed" -j ACCEPT`,
			`-A SWARM-PROXY-EGRESS -o lo -m comment`,
			`-A SWARM-PROXY-EGRESS -d 10.213.0.2 -p tcp --dport 8080 -m comment --comment "the swarm-proxy at 10.213.0.2:8080 (proxy)" -j ACCEPT`,
			`-A SWARM-PROXY-EGRESS -d fd00:213::2 -p tcp --dport 8080 -m comment`,
			`-A SWARM-PROXY-EGRESS -d 10.213.0.53 -p udp --dport 53 -m comment`,
			`-A SWARM-PROXY-EGRESS -m owner --uid-owner 65532 -m comment`,
			`-j REJECT --reject-with icmp-admin-prohibited`,
			`-j REJECT --reject-with icmp6-adm-prohibited`,
			"iptables -C OUTPUT -j SWARM-PROXY-EGRESS 2>/dev/null || iptables -I OUTPUT 1 -j SWARM-PROXY-EGRESS\n",
			"ip6tables -C OUTPUT -j SWARM-PROXY-EGRESS 2>/dev/null || ip6tables -I OUTPUT 1 -j SWARM-PROXY-EGRESS\n",
		}, nil},
		{"nftables", FormatNFTables, testConfig, []string{
			"table inet swarm_proxy_egress\ndelete table inet swarm_proxy_egress\ntable inet swarm_proxy_egress {\n",
			"type filter hook output priority filter; policy accept;",
			`ip daddr 10.213.0.2 tcp dport 8080 accept comment "the swarm-proxy at 10.213.0.2:8080 (proxy)"`,
			`ip6 daddr fd00:213::2 tcp dport 8080 accept comment`,
			`ip daddr 10.213.0.53 tcp dport 53 accept comment`,
			`meta skuid 65532 accept comment`,
			`meta l4proto tcp reject with tcp reset comment`,
			`reject with icmpx type admin-prohibited comment`,
		}, nil},
		{"admin port with allow-uid", FormatNFTables, withAdmin, []string{
			`meta skuid 65532 accept comment "processes of uid 65532 (--allow-uid: the proxy in this namespace)"
		oifname "lo" tcp dport 9090 reject with tcp reset comment "the proxy's admin port 9090 on loopback: only --allow-uid users (--admin-port)"
		oifname "lo" accept comment`}, nil},
		{"admin port with allow-uid, iptables", FormatIPTables, withAdmin, []string{
			`-A SWARM-PROXY-EGRESS -o lo -p tcp --dport 9090 -m comment --comment "the proxy's admin port 9090 on loopback: only --allow-uid users (--admin-port)" -j REJECT --reject-with tcp-reset
-A SWARM-PROXY-EGRESS -o lo -m comment`}, nil},
		{"no admin rule without allow-uid", FormatNFTables, Config{Proxy: v4only.Proxy, AdminPorts: []uint16{9090}}, nil, []string{"dport 9090"}},
		{"ND only as ND", FormatNFTables, testConfig, []string{
			`ip6 daddr ff02::1:ff00:0/104 ip6 hoplimit 255 icmpv6 type nd-neighbor-solicit accept`,
			`ip6 daddr fd00:213::2/128 ip6 hoplimit 255 icmpv6 type nd-neighbor-advert accept`,
		}, []string{"\t\ticmpv6 type"}},
		{"no DNS unless asked", FormatNFTables, v4only, nil, []string{"dport 53", "ip6 daddr fd00", "skuid"}},
		{"no DNS unless asked, iptables", FormatIPTables, v4only, nil, []string{"--dport 53", "(proxy)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			if err := Render(&b, tt.format, tt.cfg); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q", w)
				}
			}
			// Every rule carries a comment.
			for _, line := range strings.Split(out, "\n") {
				rule := strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "\t\t") && !strings.Contains(line, "type filter hook")
				if rule && !strings.Contains(line, "comment") {
					t.Errorf("rule without a comment: %s", line)
				}
			}
			if t.Failed() {
				t.Log(out)
			}
		})
	}
}

func TestRenderInvalid(t *testing.T) {
	tests := []struct {
		name   string
		format Format
		cfg    Config
	}{
		{"no proxy", FormatIPTables, Config{}},
		{"port zero", FormatNFTables, Config{Proxy: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:0")}}},
		{"quote in name", FormatNFTables, Config{Proxy: testConfig.Proxy, Names: map[netip.Addr]string{testConfig.Proxy[0].Addr(): `a"b`}}},
		{"unknown format", "pf", testConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Render(&strings.Builder{}, tt.format, tt.cfg); err == nil {
				t.Fatal("Render succeeded")
			}
		})
	}
}

func TestParseProxy(t *testing.T) {
	tests := []struct {
		in       string
		host     string
		port     uint16
		wantFail bool
	}{
		{in: "10.0.0.2:8080", host: "10.0.0.2", port: 8080},
		{in: "[fd00::2]:3128", host: "fd00::2", port: 3128},
		{in: "proxy:8080", host: "proxy", port: 8080},
		{in: "proxy", wantFail: true},
		{in: "proxy:0", wantFail: true},
		{in: ":8080", wantFail: true},
		{in: "proxy:65536", wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := ParseProxy(tt.in)
			if tt.wantFail {
				if err == nil {
					t.Fatalf("ParseProxy(%q) = %q, %d; want an error", tt.in, host, port)
				}
				return
			}
			if err != nil || host != tt.host || port != tt.port {
				t.Fatalf("ParseProxy(%q) = %q, %d, %v; want %q, %d", tt.in, host, port, err, tt.host, tt.port)
			}
		})
	}
}

func FuzzParseProxy(f *testing.F) {
	for _, s := range []string{"10.0.0.2:8080", "[::1]:1", "proxy:65535", "a:b:c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := ParseProxy(s)
		if err == nil && (host == "" || port == 0) {
			t.Fatalf("ParseProxy(%q) = %q, %d without error", s, host, port)
		}
	})
}

// requireRoot skips a test that needs root on Linux, except under CI, where it must not be skipped.
func requireRoot(t *testing.T) {
	t.Helper()
	if runtime.GOOS == "linux" && os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("this test needs root on Linux (to make a network namespace) and CI is set: it must run, not skip")
	}
	t.Skip("needs root on Linux to make a network namespace")
}

// inNewNetns runs fn on a thread moved to a fresh network namespace; the thread is discarded after.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine, namespace and all
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// TestApplyTwice applies each format twice in a fresh namespace and checks the result is one copy
// of the rules, then checks that the printed script does the same.
func TestApplyTwice(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	for _, format := range []Format{FormatIPTables, FormatNFTables} {
		t.Run(string(format), func(t *testing.T) {
			inNewNetns(t, func() {
				var reports [][]string
				for range 2 {
					r, err := Apply(ctx, format, testConfig, nil)
					if err != nil {
						t.Errorf("apply: %v", err)
						return
					}
					reports = append(reports, r)
				}
				t.Logf("first: %q\nsecond: %q", reports[0], reports[1])
				checkInstalled(t, format, reports)
			})
		})
		t.Run(string(format)+" script", func(t *testing.T) {
			var b strings.Builder
			if err := Render(&b, format, testConfig); err != nil {
				t.Fatal(err)
			}
			inNewNetns(t, func() {
				for range 2 {
					cmd := exec.Command("sh", "-s")
					if format == FormatNFTables {
						cmd = exec.Command("nft", "-f", "-")
					}
					cmd.Stdin = strings.NewReader(b.String())
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Errorf("%v: %v\n%s", cmd.Args, err, out)
						return
					}
				}
				checkInstalled(t, format, nil)
			})
		})
	}
}

// checkInstalled checks, from inside the namespace, that exactly one copy of the rules is installed.
func checkInstalled(t *testing.T, format Format, reports [][]string) {
	t.Helper()
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	switch format {
	case FormatIPTables:
		for fam, cmd := range map[family]string{4: "iptables", 6: "ip6tables"} {
			chain := run(cmd, "-S", Chain)
			if got, want := strings.Count(chain, "-A "+Chain+" "), len(testConfig.rulesFor(fam)); got != want {
				t.Errorf("%s: %d rules in %s, want %d:\n%s", cmd, got, Chain, want, chain)
			}
			if got := strings.Count(run(cmd, "-S", "OUTPUT"), "-j "+Chain); got != 1 {
				t.Errorf("%s: OUTPUT jumps to %s %d times, want once", cmd, Chain, got)
			}
		}
		if reports != nil && !strings.Contains(strings.Join(reports[1], "\n"), "OUTPUT already jumps") {
			t.Errorf("second apply did not report the existing jump: %q", reports[1])
		}
	case FormatNFTables:
		table := run("nft", "list", "table", "inet", Table)
		if got, want := strings.Count(table, "comment \""), len(testConfig.rules()); got != want {
			t.Errorf("%d rules in table %s, want %d:\n%s", got, Table, want, table)
		}
		if got := strings.Count(run("nft", "list", "tables"), Table); got != 1 {
			t.Errorf("table %s listed %d times", Table, got)
		}
	}
}

// fakeRunner records commands and fails those for which fail returns true.
type fakeRunner struct {
	calls []string
	fail  func(call string) bool
}

func (f *fakeRunner) run(_ context.Context, stdin, name string, args ...string) (string, error) {
	call := strings.TrimSpace(name + " " + strings.Join(args, " "))
	f.calls = append(f.calls, call)
	if f.fail != nil && f.fail(call) {
		return "simulated failure", errors.New("exit status 1")
	}
	if strings.HasSuffix(name, "-restore") && !strings.Contains(stdin, "COMMIT") {
		return "", errors.New("restore input without COMMIT")
	}
	return "", nil
}

func TestApplyCommands(t *testing.T) {
	tests := []struct {
		name       string
		format     Format
		fail       func(string) bool
		wantCalls  []string
		wantReport []string
		wantErr    bool
	}{
		{
			name: "iptables first time", format: FormatIPTables,
			fail: func(c string) bool { return strings.Contains(c, " -C ") },
			wantCalls: []string{
				"iptables-restore --noflush", "iptables -C OUTPUT -j " + Chain, "iptables -I OUTPUT 1 -j " + Chain,
				"ip6tables-restore --noflush", "ip6tables -C OUTPUT -j " + Chain, "ip6tables -I OUTPUT 1 -j " + Chain,
			},
			wantReport: []string{"inserted a jump"},
		},
		{
			name: "iptables again", format: FormatIPTables,
			wantCalls:  []string{"iptables-restore --noflush", "iptables -C OUTPUT -j " + Chain, "ip6tables-restore --noflush", "ip6tables -C OUTPUT -j " + Chain},
			wantReport: []string{"OUTPUT already jumps"},
		},
		{
			name: "iptables-restore fails", format: FormatIPTables,
			fail:      func(c string) bool { return strings.HasPrefix(c, "iptables-restore") },
			wantCalls: []string{"iptables-restore --noflush"}, wantErr: true,
		},
		{
			name: "nftables", format: FormatNFTables,
			wantCalls: []string{"nft -f -"}, wantReport: []string{"replaced table inet " + Table},
		},
		{
			name: "nft fails", format: FormatNFTables,
			fail:      func(string) bool { return true },
			wantCalls: []string{"nft -f -"}, wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeRunner{fail: tt.fail}
			report, err := Apply(context.Background(), tt.format, testConfig, f.run)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !slices.Equal(f.calls, tt.wantCalls) {
				t.Errorf("calls:\n%q\nwant:\n%q", f.calls, tt.wantCalls)
			}
			for _, w := range tt.wantReport {
				if !strings.Contains(strings.Join(report, "\n"), w) {
					t.Errorf("report %q lacks %q", report, w)
				}
			}
		})
	}
}
