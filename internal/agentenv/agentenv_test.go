package agentenv

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

// awkward is a value with every character that one of the formats treats specially.
const awkward = `it's "quoted" $HOME \ back\slash ${X} $(id) ` + "`id`"

func TestVars(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		cfg  Config
		want map[string]string
	}{
		{
			name: "defaults",
			want: map[string]string{
				"HTTP_PROXY": "http://127.0.0.1:8080", "https_proxy": "http://127.0.0.1:8080",
				"NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
				"NODE_USE_ENV_PROXY": "1", "ALL_PROXY": "",
			},
		},
		{
			name: "socks and no-proxy additions",
			cfg:  Config{Proxy: "proxy:3128", SOCKS: "socks5h://proxy:1080", NoProxy: []string{".internal, 10.0.0.0/8", "localhost"}},
			want: map[string]string{
				"HTTPS_PROXY": "http://proxy:3128", "ALL_PROXY": "socks5h://proxy:1080", "all_proxy": "socks5h://proxy:1080",
				"NO_PROXY": "localhost,127.0.0.1,::1,.internal,10.0.0.0/8",
			},
		},
		{
			name: "ticket credentials are percent-encoded",
			cfg: Config{Proxy: "http://[::1]:8080/", SOCKS: "socks5://[::1]:1080", Ticket: &ticket.Ticket{
				SessionID: "job 7/a", Token: "t@k:en%/?#", ExpiresAt: now.Add(time.Hour)}},
			want: map[string]string{
				"HTTP_PROXY": "http://job%207%2Fa:t%40k%3Aen%25%2F%3F%23@[::1]:8080",
				"ALL_PROXY":  "socks5://job%207%2Fa:t%40k%3Aen%25%2F%3F%23@[::1]:1080",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars, err := Vars(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, v := range vars {
				got[v.Name] = v.Value
			}
			for k, want := range tt.want {
				if got[k] != want {
					t.Errorf("%s = %q, want %q", k, got[k], want)
				}
			}
		})
	}
}

func TestVarsErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"ftp scheme", Config{Proxy: "ftp://proxy:21"}},
		{"no port", Config{Proxy: "http://proxy"}},
		{"bad port", Config{Proxy: "http://proxy:99999"}},
		{"path", Config{Proxy: "http://proxy:8080/x"}},
		{"socks with http scheme", Config{SOCKS: "http://proxy:1080"}},
		{"credentials twice", Config{Proxy: "http://u:p@proxy:8080", Ticket: &ticket.Ticket{SessionID: "s", Token: "t"}}},
		{"no-proxy with a quote", Config{NoProxy: []string{"a'b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if vars, err := Vars(tt.cfg); err == nil {
				t.Fatalf("Vars succeeded: %v", vars)
			}
		})
	}
}

func TestParseTicket(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		data    string
		wantErr error // nil: success; errAny: any error
	}{
		{"valid", `{"session_id":"s1","token":"tok","broker_addr":"b:7000","expires_at":"2026-01-01T01:00:00Z"}`, nil},
		{"no expiry", `{"session_id":"s1","token":"tok"}`, nil},
		{"expired", `{"session_id":"s1","token":"tok","expires_at":"2025-12-31T23:00:00Z"}`, ticket.ErrExpired},
		{"missing token", `{"session_id":"s1"}`, errAny},
		{"not json", `session_id: s1`, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTicket("t.json", []byte(tt.data), now)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != nil && err == nil:
				t.Fatal("ParseTicket succeeded, want an error")
			case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

var errAny = errors.New("any error")

func FuzzParseTicket(f *testing.F) {
	f.Add([]byte(`{"session_id":"s1","token":"tok","expires_at":"2030-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"session_id":"","token":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := ParseTicket("f", data, time.Unix(0, 0))
		if err != nil {
			return
		}
		if tk.SessionID == "" || tk.Token == "" {
			t.Fatalf("accepted a ticket without credentials: %+v", tk)
		}
		// Whatever a valid ticket holds must survive the trip into a proxy URL and back.
		vars, err := Vars(Config{Ticket: tk})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(vars[0].Value, "http://") {
			t.Fatalf("HTTP_PROXY = %q", vars[0].Value)
		}
	})
}

// testVars is a set of variables with awkward values, to check each format's quoting.
func testVars() []Var {
	return []Var{{"HTTP_PROXY", "http://s%27:t%24@proxy:8080"}, {"SWARM_AWKWARD", awkward}, {"EMPTY", ""}}
}

// TestRenderShells evaluates the output in real shells and reads the environment back.
func TestRenderShells(t *testing.T) {
	shells := []struct {
		format Format
		argv   []string
	}{
		{FormatSh, []string{"sh", "-c", `eval "$(cat)" && env -0`}},
		{FormatSh, []string{"bash", "--norc", "-c", `eval "$(cat)" && env -0`}},
		{FormatFish, []string{"fish", "--no-config", "-c", `cat | source; and env -0`}},
	}
	for _, sh := range shells {
		t.Run(sh.argv[0], func(t *testing.T) {
			if _, err := exec.LookPath(sh.argv[0]); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("%s is not installed and CI is set (scripts/test.sh installs it)", sh.argv[0])
				}
				t.Skipf("%s is not installed (scripts/test.sh installs it)", sh.argv[0])
			}
			var out bytes.Buffer
			if err := Render(&out, sh.format, testVars()); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(sh.argv[0], sh.argv[1:]...)
			cmd.Stdin = &out
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "X=x"}
			b, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v", sh.argv[0], err)
			}
			env := map[string]string{}
			for _, kv := range strings.Split(string(b), "\x00") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
			for _, v := range testVars() {
				if got, ok := env[v.Name]; !ok || got != v.Value {
					t.Errorf("%s: %s = %q (set: %v), want %q", sh.argv[0], v.Name, got, ok, v.Value)
				}
			}
		})
	}
}

func TestRenderCompose(t *testing.T) {
	var out bytes.Buffer
	if err := Render(&out, FormatCompose, testVars()); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Environment map[string]string `yaml:"environment"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, out.String())
	}
	for _, v := range testVars() {
		// compose interpolates $VAR and turns $$ into $.
		if got := strings.ReplaceAll(doc.Environment[v.Name], "$$", "$"); got != v.Value {
			t.Errorf("%s = %q, want %q", v.Name, got, v.Value)
		}
	}
}

func TestRenderJSON(t *testing.T) {
	var out bytes.Buffer
	if err := Render(&out, FormatJSON, testVars()); err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	for _, v := range testVars() {
		if got[v.Name] != v.Value {
			t.Errorf("%s = %q, want %q", v.Name, got[v.Name], v.Value)
		}
	}
}

func TestRenderDockerfile(t *testing.T) {
	var out bytes.Buffer
	if err := Render(&out, FormatDockerfile, testVars()); err != nil {
		t.Fatal(err)
	}
	want := `ENV SWARM_AWKWARD="it's \"quoted\" \$HOME \\ back\\slash \${X} \$(id) ` + "`id`" + `"`
	if !strings.Contains(out.String(), want+"\n") {
		t.Errorf("output:\n%s\nwant a line %s", out.String(), want)
	}
}

func TestRenderUnknownFormat(t *testing.T) {
	if err := Render(&bytes.Buffer{}, "xml", testVars()); err == nil {
		t.Fatal("Render accepted format xml")
	}
}

// FuzzRender renders whatever Vars accepts in every format and checks the JSON and compose output
// read back to the same values.
func FuzzRender(f *testing.F) {
	f.Add("http://proxy:8080", "socks5h://proxy:1080", ".corp,10.0.0.0/8", "s", "t")
	f.Add("[::1]:3128", "", "", "job 7", "t@k:en%/?#'\"$")
	f.Fuzz(func(t *testing.T, proxy, socks, noProxy, session, token string) {
		cfg := Config{Proxy: proxy, SOCKS: socks, NoProxy: []string{noProxy}}
		if session != "" && token != "" {
			cfg.Ticket = &ticket.Ticket{SessionID: session, Token: token}
		}
		vars, err := Vars(cfg)
		if err != nil {
			return
		}
		for _, format := range Formats {
			var b bytes.Buffer
			if err := Render(&b, format, vars); err != nil {
				t.Fatalf("%s: %v", format, err)
			}
			switch format {
			case FormatJSON:
				var got map[string]string
				if err := json.Unmarshal(b.Bytes(), &got); err != nil {
					t.Fatalf("json: %v\n%s", err, b.String())
				}
				for _, v := range vars {
					if got[v.Name] != v.Value {
						t.Fatalf("json %s = %q, want %q", v.Name, got[v.Name], v.Value)
					}
				}
			case FormatCompose:
				var doc struct {
					Environment map[string]string `yaml:"environment"`
				}
				if err := yaml.Unmarshal(b.Bytes(), &doc); err != nil {
					t.Fatalf("compose: %v\n%s", err, b.String())
				}
				for _, v := range vars {
					if got := strings.ReplaceAll(doc.Environment[v.Name], "$$", "$"); got != v.Value {
						t.Fatalf("compose %s = %q, want %q", v.Name, got, v.Value)
					}
				}
			}
		}
	})
}

func TestVarsCA(t *testing.T) {
	vars, err := Vars(Config{CA: "/etc/sp/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range vars {
		got[v.Name] = v.Value
	}
	for _, name := range []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE", "CARGO_HTTP_CAINFO"} {
		if got[name] != "/etc/sp/ca-bundle.pem" {
			t.Errorf("%s = %q, want the bundle beside the CA", name, got[name])
		}
	}
	if got["NODE_EXTRA_CA_CERTS"] != "/etc/sp/ca.pem" {
		t.Errorf("NODE_EXTRA_CA_CERTS = %q, want the CA alone", got["NODE_EXTRA_CA_CERTS"])
	}
	vars, _ = Vars(Config{CA: "/a/ca.pem", CABundle: "/b/bundle.pem"})
	for _, v := range vars {
		if v.Name == "SSL_CERT_FILE" && v.Value != "/b/bundle.pem" {
			t.Errorf("SSL_CERT_FILE = %q, want --ca-bundle", v.Value)
		}
	}
	vars, _ = Vars(Config{})
	for _, v := range vars {
		if v.Name == "SSL_CERT_FILE" || v.Name == "NODE_EXTRA_CA_CERTS" {
			t.Errorf("%s set without a CA", v.Name)
		}
	}
}
