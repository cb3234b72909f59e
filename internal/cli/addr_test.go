package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestListenAddr: every listen flag takes HOST:PORT, http://HOST:PORT, :PORT (every interface) or a
// port alone (loopback), and refuses anything else showing the expected form.
func TestListenAddr(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "127.0.0.1:8080", want: "127.0.0.1:8080"},
		{in: "8080", want: "127.0.0.1:8080"},
		{in: "0", want: "127.0.0.1:0"},
		{in: ":8080", want: ":8080"},
		{in: "[::1]:8080", want: "[::1]:8080"},
		{in: "localhost:8080", want: "localhost:8080"},
		{in: "http://127.0.0.1:8080", want: "127.0.0.1:8080"},
		{in: "http://127.0.0.1:8080/", want: "127.0.0.1:8080"},
		{in: "http://8080", want: "127.0.0.1:8080"},
		{in: "", want: ""},
		{in: "8080x", err: `--listen "8080x": no port; want HOST:PORT, e.g. 127.0.0.1:8080 (":8080" listens on every interface)`},
		{in: "127.0.0.1", err: "no port"},
		{in: "127.0.0.1:99999", err: `port "99999" is not a number from 0 to 65535`},
		{in: "127.0.0.1:-1", err: "is not a number"},
		{in: "65536", err: "no port"},
		{in: "https://127.0.0.1:8080", err: "not an address"},
		{in: "http://u:p@127.0.0.1:8080", err: "not an address"},
		{in: "http://127.0.0.1:8080/x", err: "not an address"},
		{in: "a b:80", err: "is not a name or an IP address"},
	}
	for _, tt := range tests {
		got, err := listenAddr("listen", tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("listenAddr(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("listenAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestProxyFlagAddresses(t *testing.T) {
	for in, want := range map[string]string{"127.0.0.1:8080": "http://127.0.0.1:8080", "http://127.0.0.1:8080": "http://127.0.0.1:8080",
		"http://u:p@proxy:3128": "http://u:p@proxy:3128", "socks5://x:1": "socks5://x:1", "": ""} {
		if got := proxyFlagURL(in); got != want {
			t.Errorf("proxyFlagURL(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"127.0.0.1:8080": "127.0.0.1:8080", "http://127.0.0.1:8080": "127.0.0.1:8080", "http://proxy:3128/": "proxy:3128"} {
		if got := proxyHostPort(in); got != want {
			t.Errorf("proxyHostPort(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestProxyListenFlags: the proxy command refuses a listen address it cannot use, naming the flag
// and the expected form, before it starts anything.
func TestProxyListenFlags(t *testing.T) {
	for _, args := range [][]string{{"--listen", "8080x"}, {"--admin-listen", "localhost"}, {"--socks-listen", "1080:"}} {
		r := runCLI(t, "", append([]string{"proxy"}, args...)...)
		if r.err == nil || !strings.Contains(r.err.Error(), args[0]+" "+`"`+args[1]+`"`) || !strings.Contains(r.err.Error(), "want HOST:PORT, e.g. 127.0.0.1:8080") {
			t.Errorf("proxy %q: %v", args, r.err)
		}
	}
}

// TestBrokerAddressSyntax: a ticket made with --broker http://HOST:PORT holds HOST:PORT, and env
// turns it into a usable proxy URL; broker --provider-listen is checked like every listen flag.
func TestBrokerAddressSyntax(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s", 44)), 0o600); err != nil {
		t.Fatal(err)
	}
	tk := filepath.Join(t.TempDir(), "t.json")
	if r := runCLI(t, "", "ticket", "--session", "a", "--secret-file", secret, "--broker", "http://127.0.0.1:8080", "--out", tk); r.err != nil {
		t.Fatal(r.err)
	}
	data, err := os.ReadFile(tk)
	if err != nil || !strings.Contains(string(data), `"broker_addr":"127.0.0.1:8080"`) {
		t.Fatalf("ticket: %v %s", err, data)
	}
	r := runCLI(t, "", "env", "--ticket", tk)
	if r.err != nil || !strings.Contains(r.stdout, "@127.0.0.1:8080'") || strings.Contains(r.stdout, "http://http") {
		t.Fatalf("env: %v\n%s", r.err, r.stdout)
	}
	r = runCLI(t, "", "broker", "--provider-listen", "70x", "--secret-file", secret, "--insecure-plaintext")
	if r.err == nil || !strings.Contains(r.err.Error(), `--provider-listen "70x": no port; want HOST:PORT`) {
		t.Fatalf("broker --provider-listen 70x: %v", r.err)
	}
}
