package doctor

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeProxy is a loopback HTTP server that plays swarm-proxy: it denies hosts containing "blocked"
// with a 403 and the decision header, and answers everything else itself with 200 (standing in for
// the upstream). CONNECT is answered 403 for blocked hosts too.
func fakeProxy(t *testing.T, ip string) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz" && r.URL.Host == "":
			w.Write([]byte("ok\n"))
		case strings.Contains(r.Host, "blocked"):
			w.Header().Set(HeaderDecision, `deny; code=no_rule_matched; reason="not in policy"`)
			http.Error(w, "swarm-proxy blocked", http.StatusForbidden)
		case strings.HasSuffix(r.Host, ".invalid"):
			w.Header().Set(HeaderError, `resolve; reason="no such host"`)
			http.Error(w, "swarm-proxy could not resolve", http.StatusBadGateway)
		default:
			w.Write([]byte("upstream\n"))
		}
	}))
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestRun(t *testing.T) {
	proxy := fakeProxy(t, "127.0.0.1")
	// The admin address guessed for a proxy on 127.0.0.2 is 127.0.0.2:9090, where nothing listens.
	proxy2 := fakeProxy(t, "127.0.0.2")
	good := map[string]string{
		"HTTP_PROXY": proxy.URL, "http_proxy": proxy.URL, "HTTPS_PROXY": proxy.URL, "https_proxy": proxy.URL,
		"NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1", "NODE_USE_ENV_PROXY": "1",
	}
	with := func(changes map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range changes {
			if v == "" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	tests := []struct {
		name     string
		env      map[string]string
		cfg      Config
		tools    map[string]string // tool -> output of its command; absent: not installed
		want     []string          // substrings of the printed results, in any order
		notWant  []string          // substrings that must not be printed
		wantFail bool
	}{
		{
			name: "all good, admin given",
			env:  good, cfg: Config{Admin: proxy.URL + "/healthz"},
			want: []string{"ok    HTTP_PROXY/http_proxy: " + proxy.URL, "ok    proxy reachable", "ok    proxy health", "ok    proxy identity", "ok    tool curl: not installed"},
		},
		{
			name: "no variables", env: map[string]string{},
			want:     []string{"fail  HTTP_PROXY/http_proxy: not set", "fail  HTTPS_PROXY/https_proxy: not set", "warn  NO_PROXY/no_proxy: not set"},
			wantFail: true,
		},
		{
			// git's HTTP transport is libcurl, which reads only the lowercase http_proxy, like curl.
			name: "uppercase only", env: with(map[string]string{"http_proxy": ""}),
			tools: map[string]string{"curl": "", "git": ""},
			want: []string{"warn  HTTP_PROXY/http_proxy: only HTTP_PROXY is set (" + proxy.URL + ")",
				"warn  tool curl: ignores HTTP_PROXY", "warn  tool git: ignores HTTP_PROXY"},
			notWant: []string{"ok    HTTP_PROXY/http_proxy", "ok    tool git"},
		},
		{
			name: "lowercase only", env: with(map[string]string{"HTTPS_PROXY": ""}),
			tools:   map[string]string{"curl": "", "git": ""},
			want:    []string{"warn  HTTPS_PROXY/https_proxy: only https_proxy is set", "ok    tool curl", "ok    tool git"},
			notWant: []string{"ok    HTTPS_PROXY/https_proxy"},
		},
		{
			name: "variables differ", env: with(map[string]string{"HTTPS_PROXY": "http://elsewhere:3128"}),
			want:    []string{"warn  HTTPS_PROXY/https_proxy: differ (http://elsewhere:3128 vs " + proxy.URL + ")"},
			notWant: []string{"ok    HTTPS_PROXY/https_proxy"},
		},
		{
			name: "no_proxy differs", env: with(map[string]string{"NO_PROXY": "localhost", "no_proxy": "localhost,.corp"}),
			want:    []string{`warn  NO_PROXY/no_proxy: differ ("localhost" vs "localhost,.corp"); no_proxy: .corp bypass the proxy`},
			notWant: []string{"ok    NO_PROXY/no_proxy"},
		},
		{
			name: "malformed", env: with(map[string]string{"HTTPS_PROXY": "ftp://x:1", "https_proxy": "ftp://x:1"}),
			want: []string{`fail  HTTPS_PROXY/https_proxy: "ftp://x:1": scheme "ftp"`}, wantFail: true,
		},
		{
			name: "credentials redacted", env: with(map[string]string{"HTTPS_PROXY": "http://s:secret@" + proxy.Listener.Addr().String(), "https_proxy": ""}),
			want: []string{"s:xxxxx@"},
		},
		{
			name: "all_proxy checked", env: with(map[string]string{"all_proxy": "socks5h://proxy"}),
			want: []string{`fail  ALL_PROXY/all_proxy: "socks5h://proxy" has no port`}, wantFail: true,
		},
		{
			name: "no_proxy star", env: with(map[string]string{"NO_PROXY": "*", "no_proxy": "*"}),
			want: []string{`fail  NO_PROXY/no_proxy: "*"`}, wantFail: true,
		},
		{
			name: "no_proxy bypass with cidr", env: with(map[string]string{"NO_PROXY": "localhost,10.0.0.0/8,.corp", "no_proxy": ""}),
			want: []string{"warn  NO_PROXY/no_proxy: 10.0.0.0/8, .corp bypass the proxy", "CIDR entries"},
		},
		{
			name: "proxy down", env: with(map[string]string{"HTTP_PROXY": "http://" + closedAddr(t), "http_proxy": "", "HTTPS_PROXY": "", "https_proxy": ""}),
			want: []string{"fail  proxy reachable"}, wantFail: true,
		},
		{
			name: "derived admin only warns", env: with(map[string]string{"https_proxy": proxy2.URL, "HTTPS_PROXY": proxy2.URL}),
			want: []string{"warn  proxy health: http://127.0.0.2:9090/healthz (guessed"},
		},
		{
			name: "expect deny met", env: good, cfg: Config{URLs: []string{"http://blocked.example/"}, Expect: ExpectDeny},
			want: []string{"ok    request http://blocked.example/: blocked by policy: deny; code=no_rule_matched"},
		},
		{
			name: "expect allow not met", env: good, cfg: Config{URLs: []string{"http://blocked.example/", "http://fine.example/"}, Expect: ExpectAllow},
			want:     []string{"fail  request http://blocked.example/: blocked by policy", "ok    request http://fine.example/: allowed (200)"},
			wantFail: true,
		},
		{
			name: "expect deny not met", env: good, cfg: Config{URLs: []string{"http://fine.example/"}, Expect: ExpectDeny},
			want: []string{"fail  request http://fine.example/: allowed (200), expected blocked"}, wantFail: true,
		},
		{
			name: "https blocked at CONNECT", env: good, cfg: Config{URLs: []string{"https://blocked.example/"}, Expect: ExpectDeny},
			want: []string{"ok    request https://blocked.example/: blocked by policy"},
		},
		{
			name: "--proxy disagrees with the variables", env: good, cfg: Config{Proxy: "http://" + closedAddr(t)},
			want: []string{"points to " + proxy.Listener.Addr().String() + ", not to the proxy"}, wantFail: true,
		},
		{
			name: "tools", env: good,
			tools: map[string]string{
				"git": "http.proxy http://elsewhere:3128", "npm": "proxy=null\nhttps-proxy=http://elsewhere:3128\nnoproxy=",
				"node": "v20.20.2", "pip3": "global.proxy='http://elsewhere:1'", "python3": "", "go": "",
			},
			want: []string{"warn  tool git: git config overrides", "warn  tool npm: npm config overrides the variables: https-proxy=http://elsewhere:3128",
				"warn  tool node: v20.20.2 ignores", "warn  tool pip: pip.conf sets a proxy", "ok    tool python3", "ok    tool go"},
		},
		{
			name: "new node without the switch", env: with(map[string]string{"NODE_USE_ENV_PROXY": ""}),
			tools: map[string]string{"node": "v24.11.0"},
			want:  []string{"warn  tool node: v24.11.0 reads the variables only with NODE_USE_ENV_PROXY=1"},
		},
		{
			name: "new node", env: good, tools: map[string]string{"node": "v22.21.1"},
			want: []string{"ok    tool node: v22.21.1 with NODE_USE_ENV_PROXY=1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Timeout = 5 * time.Second
			cfg.LookupEnv = envOf(tt.env)
			cfg.LookPath = func(name string) (string, error) {
				if _, ok := tt.tools[name]; ok {
					return "/usr/bin/" + name, nil
				}
				return "", errors.New("not found")
			}
			cfg.Output = func(_ context.Context, name string, _ ...string) (string, error) { return tt.tools[name], nil }
			cfg.DialDirect = refuseDirect // the capture check: nothing leaves the machine
			cfg.ReadProcStatus = procStatus("0000000000000000")
			var lines []string
			results := Run(context.Background(), cfg, func(r Result) { lines = append(lines, r.String()) })
			out := strings.Join(lines, "\n")
			if len(results) != len(lines) {
				t.Errorf("%d results, %d emitted", len(results), len(lines))
			}
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
			// One line per check: a warning is not followed by an ok for the same thing.
			seen := map[string]bool{}
			for _, r := range results {
				if seen[r.Check] {
					t.Errorf("check %q reported more than once", r.Check)
				}
				seen[r.Check] = true
			}
			if Failed(results) != tt.wantFail {
				t.Errorf("Failed = %v, want %v", Failed(results), tt.wantFail)
			}
			if strings.Contains(out, "secret") {
				t.Error("output shows the token")
			}
			if t.Failed() {
				t.Log(out)
			}
		})
	}
}

func TestParseProxyURL(t *testing.T) {
	tests := []struct {
		in   string
		host string
		ok   bool
	}{
		{"http://proxy:8080", "proxy:8080", true},
		{"proxy:3128", "proxy:3128", true},
		{"socks5h://[::1]:1080", "[::1]:1080", true},
		{"http://proxy", "", false},
		{"http://:8080", "", false},
		{"gopher://proxy:70", "", false},
		{"http://proxy:0", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := parseProxyURL(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("parseProxyURL(%q) error %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err == nil && u.Host != tt.host {
				t.Fatalf("host %q, want %q", u.Host, tt.host)
			}
		})
	}
}

func FuzzParseProxyURL(f *testing.F) {
	for _, s := range []string{"http://proxy:8080", "proxy:1", "http://u:p@[::1]:1", "%", "http://x:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseProxyURL(s)
		if err != nil {
			return
		}
		if u.Hostname() == "" || u.Port() == "" {
			t.Fatalf("accepted %q without host or port", s)
		}
		if _, err := url.Parse(redact(s)); err != nil && strings.Contains(s, "://") {
			t.Fatalf("redact broke %q: %v", s, err)
		}
	})
}

// refuseDirect stands for a firewall that refuses direct connections.
func refuseDirect(context.Context, string, string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}
