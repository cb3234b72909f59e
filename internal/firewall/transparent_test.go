package firewall

import (
	"context"
	"flag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var captureConfig = Config{
	AllowUIDs: []uint32{65532},
	Capture:   &Capture{ProxyPort: 15001, DNSPort: 15053},
}

// TestRenderCapture compares the transparent rule sets with testdata/capture.* byte for byte (go
// test -run TestRenderCapture -update rewrites them after a deliberate change).
func TestRenderCapture(t *testing.T) {
	withProxy := captureConfig
	withProxy.Proxy = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:8080")}
	noDNS := Config{AllowUIDs: []uint32{65532}, Capture: &Capture{ProxyPort: 15001}}
	for _, tc := range []struct {
		golden string
		format Format
		cfg    Config
	}{
		{"capture.iptables.sh", FormatIPTables, captureConfig},
		{"capture.nft", FormatNFTables, captureConfig},
		{"capture-explicit-proxy.nft", FormatNFTables, withProxy},
		{"capture-no-dns.iptables.sh", FormatIPTables, noDNS},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var b strings.Builder
			if err := Render(&b, tc.format, tc.cfg); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if b.String() != string(want) {
				t.Errorf("%s differs from the output:\n%s", path, b.String())
			}
		})
	}
}

func TestCaptureInvalid(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no --allow-uid: the proxy would loop": {Capture: &Capture{ProxyPort: 15001}},
		"no proxy port":                        {AllowUIDs: []uint32{1}, Capture: &Capture{}},
	} {
		t.Run(name, func(t *testing.T) {
			if err := Render(&strings.Builder{}, FormatNFTables, cfg); err == nil {
				t.Fatal("Render succeeded")
			}
		})
	}
}

// TestCaptureRedirects applies the transparent rules in a namespace of the test's own, with a veth
// pair and nothing behind it, and shows that a TCP connection and a DNS query to an outside address
// arrive at the listeners on the redirect ports, and that applying twice leaves one copy.
func TestCaptureRedirects(t *testing.T) {
	requireRoot(t)
	for _, format := range []Format{FormatIPTables, FormatNFTables} {
		t.Run(string(format), func(t *testing.T) {
			inNewNetns(t, func() {
				for _, c := range [][]string{
					{"ip", "link", "set", "lo", "up"},
					{"ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"},
					{"ip", "addr", "add", "10.9.0.1/24", "dev", "v0"},
					{"ip", "addr", "add", "fd00:9::1/64", "dev", "v0", "nodad"},
					{"ip", "link", "set", "v0", "up"},
					{"ip", "link", "set", "v1", "up"},
				} {
					if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
						t.Errorf("%v: %v %s", c, err, out)
						return
					}
				}
				for range 2 {
					if _, err := Apply(context.Background(), format, captureConfig, nil); err != nil {
						t.Errorf("apply: %v", err)
						return
					}
				}
				checkCaptureInstalled(t, format)
				tcp, err := net.Listen("tcp", "[::]:15001")
				if err != nil {
					t.Error(err)
					return
				}
				defer tcp.Close()
				// A redirected packet's destination is the loopback address of its family.
				udp := map[string]net.PacketConn{}
				for fam, addr := range map[string]string{"10.9.0.2": "127.0.0.1:15053", "fd00:9::2": "[::1]:15053"} {
					pc, err := net.ListenPacket("udp", addr)
					if err != nil {
						t.Error(err)
						return
					}
					defer pc.Close()
					udp[fam] = pc
				}
				for _, dst := range []string{"10.9.0.2", "fd00:9::2"} {
					c, err := net.DialTimeout("tcp", net.JoinHostPort(dst, "443"), 5*time.Second)
					if err != nil {
						t.Errorf("TCP to %s was not redirected: %v", dst, err)
						continue
					}
					s, err := tcp.Accept()
					if err != nil {
						t.Error(err)
						return
					}
					c.Write([]byte("ping"))
					buf := make([]byte, 4)
					s.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := s.Read(buf); err != nil || string(buf) != "ping" {
						t.Errorf("TCP to %s: the listener read %q, %v", dst, buf, err)
					}
					c.Close()
					s.Close()

					// A DNS query to port 53 reaches the guard's port, and its answer gets back.
					q, err := net.Dial("udp", net.JoinHostPort(dst, "53"))
					if err != nil {
						t.Error(err)
						return
					}
					q.Write([]byte("query"))
					udp[dst].SetReadDeadline(time.Now().Add(5 * time.Second))
					n, from, err := udp[dst].ReadFrom(buf[:])
					if err != nil {
						t.Errorf("UDP 53 to %s was not redirected: %v", dst, err)
						q.Close()
						continue
					}
					udp[dst].WriteTo(buf[:n], from)
					q.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := q.Read(buf); err != nil {
						t.Errorf("the redirected DNS answer did not get back to the client at %s: %v", from, err)
					}
					q.Close()
				}
				// A resolver on loopback (Docker's 127.0.0.11) is no way around the guard.
				q, err := net.Dial("udp", "127.0.0.11:53")
				if err != nil {
					t.Error(err)
					return
				}
				q.Write([]byte("query"))
				udp["10.9.0.2"].SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, _, err := udp["10.9.0.2"].ReadFrom(make([]byte, 16)); err != nil {
					t.Errorf("UDP 53 to a loopback resolver was not redirected to the guard: %v", err)
				}
				q.Close()
				// Anything else is still refused: UDP to another port.
				u, _ := net.Dial("udp", "10.9.0.2:123")
				u.Write([]byte("ntp"))
				u.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := u.Read(make([]byte, 4)); err == nil || !strings.Contains(err.Error(), "no route to host") {
					t.Errorf("UDP to port 123: %v, want the rules' rejection (admin-prohibited: no route to host)", err)
				}
				u.Close()
			})
		})
	}
}

// checkCaptureInstalled checks that the capture chain holds one copy of its rules and is jumped to
// once.
func checkCaptureInstalled(t *testing.T, format Format) {
	t.Helper()
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	want := len(captureConfig.captureRules())
	switch format {
	case FormatIPTables:
		for _, cmd := range []string{"iptables", "ip6tables"} {
			if got := strings.Count(run(cmd, "-t", "nat", "-S", CaptureChain), "-A "+CaptureChain+" "); got != want {
				t.Errorf("%s: %d rules in %s, want %d", cmd, got, CaptureChain, want)
			}
			if got := strings.Count(run(cmd, "-t", "nat", "-S", "OUTPUT"), "-j "+CaptureChain); got != 1 {
				t.Errorf("%s: nat OUTPUT jumps to %s %d times, want once", cmd, CaptureChain, got)
			}
		}
	case FormatNFTables:
		chain := run("nft", "list", "chain", "inet", Table, "capture")
		if got := strings.Count(chain, "comment \""); got != want {
			t.Errorf("%d rules in chain capture, want %d:\n%s", got, want, chain)
		}
	}
}
