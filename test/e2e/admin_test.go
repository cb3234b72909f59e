package e2e

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func metricValue(t *testing.T, metrics, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no series %s in metrics", series)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestAdminEndpoints(t *testing.T) {
	srv := pingServer(t)
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv))))
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, "http://"+p.Admin+path); code != 200 {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
	Curl(t, "-x", "http://"+p.Addr, srv.URL+"/ping.txt")
	Curl(t, "-x", "http://"+p.Addr, srv.URL+"/ping.txt")
	Curl(t, "-x", "http://"+p.Addr, "http://blocked.example/")
	_, metrics := httpGet(t, "http://"+p.Admin+"/metrics")
	if v := metricValue(t, metrics, `swarm_proxy_requests_total{decision="allow",status="200"}`); v != 2 {
		t.Errorf("allowed requests = %v, want 2", v)
	}
	if v := metricValue(t, metrics, `swarm_proxy_requests_total{decision="deny",status="403"}`); v != 1 {
		t.Errorf("denied requests = %v, want 1", v)
	}
	if v := metricValue(t, metrics, `swarm_proxy_bytes_total{direction="in"}`); v != 54 {
		t.Errorf("bytes in = %v, want 54", v)
	}
	if v := metricValue(t, metrics, `swarm_proxy_upstream_dial_seconds_count`); v < 1 {
		t.Errorf("dial latency observations = %v", v)
	}
	metricValue(t, metrics, "swarm_proxy_active_tunnels")
}

// TestLogFileRotation writes enough requests to rotate a 1 MB log and checks that no record is lost
// across the live file and the compressed backup.
func TestLogFileRotation(t *testing.T) {
	srv := pingServer(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "access.log")
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv))), "--log-file", logFile, "--log-max-size", "1")
	proxyURL, _ := url.Parse("http://" + p.Addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	const n = 3500 // about 400 bytes a record: past 1 MB
	for i := range n {
		resp, err := client.Get(fmt.Sprintf("%s/ping.txt?i=%d", srv.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	countLines := func() (int, int) {
		files, _ := filepath.Glob(filepath.Join(dir, "access*"))
		total, gz := 0, 0
		for _, f := range files {
			fh, err := os.Open(f)
			if err != nil {
				t.Fatal(err)
			}
			var r io.Reader = fh
			if strings.HasSuffix(f, ".gz") {
				zr, err := gzip.NewReader(fh)
				if err != nil {
					fh.Close()
					return -1, 0 // still being compressed
				}
				r, gz = zr, gz+1
			}
			b, err := io.ReadAll(r)
			fh.Close()
			if err != nil {
				return -1, 0 // a backup still being compressed
			}
			total += len(ParseRecords(t, string(b)))
		}
		return total, gz
	}
	Eventually(t, "all records across the rotated files", func() bool {
		total, gz := countLines()
		return total == n && gz >= 1
	})
	if strings.TrimSpace(p.Stdout()) != "" {
		t.Errorf("records went to stdout with --log-file")
	}
}
