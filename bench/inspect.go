package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
)

// The -inspect run measures HTTPS through swarm-proxy when a rule inspects it, against the same
// proxy passing the TLS through untouched and against mitmproxy (mitmdump), on loopback: GET/s of
// small responses over kept-alive connections, one-stream download throughput, and the handshake
// (CONNECT and TLS) with a warm and a cold leaf cache.

// inspectSizes are the sizes of an -inspect run.
type inspectSizes struct {
	Workers   int           // concurrent clients of the GET/s phase
	Duration  time.Duration // of the GET/s phase
	Stream    int64         // bytes of one download
	Streams   int           // downloads, the median is reported
	Handshake int           // handshakes per connect figure
}

var (
	inspectFull  = inspectSizes{Workers: 16, Duration: 4 * time.Second, Stream: 256 << 20, Streams: 3, Handshake: 300}
	inspectShort = inspectSizes{Workers: 4, Duration: 300 * time.Millisecond, Stream: 8 << 20, Streams: 1, Handshake: 20}
)

// httpsPath is one way to reach the HTTPS target: its proxy, the URL host to ask for and the roots
// the client trusts.
type httpsPath struct {
	name     string
	proxy    string // host:port
	host     string // the URL's host:port
	tls      *tls.Config
	procs    []*proc
	pid      int                // the proxy's process, whose CPU time the download reports
	coldHost func(i int) string // a CONNECT host whose leaf is not cached yet; nil when not measured
}

func (p *httpsPath) stop() {
	for _, pr := range p.procs {
		pr.stop()
	}
}

var adminRE = regexp.MustCompile(`admin=(\S+)`)

// runInspect is `bench -inspect`.
func runInspect(ctx context.Context, e env, short bool, stdout io.Writer, logf func(string, ...any)) error {
	sz := inspectFull
	if short {
		sz = inspectShort
	}
	dir := filepath.Join(e.dir, "inspect")
	upCA, err := inspect.CreateCA(filepath.Join(dir, "upstream-ca"), "bench upstream", time.Now())
	if err != nil {
		return err
	}
	upCAFile := filepath.Join(dir, "upstream-ca", inspect.CertFile)
	leaf, err := (&inspect.Minter{CA: upCA}).Certificate("localhost")
	if err != nil {
		return err
	}
	upAddr, stopUp, err := startHTTPSUpstream(leaf)
	if err != nil {
		return err
	}
	defer stopUp()
	_, upPort, _ := net.SplitHostPort(upAddr)
	upPool := x509.NewCertPool()
	upPool.AddCert(upCA.Cert)

	caDir := filepath.Join(dir, "ca")
	ca, err := inspect.CreateCA(caDir, "bench", time.Now())
	if err != nil {
		return err
	}
	caPool := x509.NewCertPool()
	caPool.AddCert(ca.Cert)
	pol := filepath.Join(dir, "policy.yaml")
	policy := `mode: enforce
allow:
  - host: localhost
    name: inspected
    http:
      - methods: [GET]
        paths: ["/**"]
  - host: "*.bench.test"
    name: cold-cache
    inspect: true
  - cidr: 127.0.0.0/8
    name: loopback
`
	if err := os.WriteFile(pol, []byte(policy), 0o644); err != nil {
		return err
	}
	pr, addr, err := startProc(e.binary, listeningRE, "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--policy", pol, "--policy-poll", "0", "--log-file", filepath.Join(dir, "access.log"),
		"--ca-cert", filepath.Join(caDir, inspect.CertFile), "--ca-key", filepath.Join(caDir, inspect.KeyFile), "--upstream-ca", upCAFile)
	if err != nil {
		return err
	}
	defer pr.stop()
	admin := ""
	if m := adminRE.FindStringSubmatch(pr.log()); m != nil {
		admin = m[1]
	}
	paths := []*httpsPath{
		{name: "passthrough", proxy: addr, host: "127.0.0.1:" + upPort, tls: &tls.Config{RootCAs: upPool, ServerName: "localhost"}, pid: pr.cmd.Process.Pid},
		{name: "inspected", proxy: addr, host: "localhost:" + upPort, tls: &tls.Config{RootCAs: caPool}, pid: pr.cmd.Process.Pid,
			coldHost: func(i int) string { return fmt.Sprintf("n%d.bench.test", i) }},
	}
	skipped := ""
	if mp, err := mitmPath(ctx, dir, upCAFile, upPort); err != nil {
		skipped = err.Error()
		logf("mitmproxy: skipped: %v", err)
	} else {
		defer mp.stop()
		paths = append(paths, mp)
	}

	type row struct{ metric, unit string }
	rows := []row{{"https GET/s (1 KiB)", "req/s"}, {"https GET p50", "µs"}, {"1-stream download", "MiB/s"},
		{"connect p50 (CONNECT+TLS, warm cache)", "µs"}, {"connect p50 (CONNECT+TLS, cold cache)", "µs"},
		{"1-stream download: proxy CPU", "s/GiB"}}
	values := map[[2]string]float64{}
	for _, p := range paths {
		logf("%s: GET/s", p.name)
		rate, p50, err := getRate(ctx, p, sz)
		if err != nil {
			return fmt.Errorf("%s: GET/s: %w", p.name, err)
		}
		values[[2]string{p.name, rows[0].metric}], values[[2]string{p.name, rows[1].metric}] = rate, us(p50)
		logf("%s: download", p.name)
		mbps, cpu, err := streamRate(ctx, p, sz)
		if err != nil {
			return fmt.Errorf("%s: download: %w", p.name, err)
		}
		values[[2]string{p.name, rows[2].metric}] = mbps
		if cpu >= 0 {
			values[[2]string{p.name, rows[5].metric}] = cpu
		}
		logf("%s: handshakes", p.name)
		warm, err := handshakes(ctx, p, sz.Handshake, func(int) string { return p.host })
		if err != nil {
			return fmt.Errorf("%s: handshakes: %w", p.name, err)
		}
		values[[2]string{p.name, rows[3].metric}] = us(warm)
		if p.coldHost != nil {
			cold, err := handshakes(ctx, p, sz.Handshake, func(i int) string { return p.coldHost(i) + ":443" })
			if err != nil {
				return fmt.Errorf("%s: cold handshakes: %w", p.name, err)
			}
			values[[2]string{p.name, rows[4].metric}] = us(cold)
		}
	}

	fmt.Fprintf(stdout, "| metric | unit |")
	for _, p := range paths {
		fmt.Fprintf(stdout, " %s |", p.name)
	}
	fmt.Fprintf(stdout, "\n|---|---|%s\n", strings.Repeat("---:|", len(paths)))
	for _, r := range rows {
		if !slices.ContainsFunc(paths, func(p *httpsPath) bool { _, ok := values[[2]string{p.name, r.metric}]; return ok }) {
			continue // a figure this system cannot measure
		}
		fmt.Fprintf(stdout, "| %s | %s |", r.metric, r.unit)
		for _, p := range paths {
			v, ok := values[[2]string{p.name, r.metric}]
			switch {
			case !ok:
				fmt.Fprint(stdout, " – |")
			case p.name == "inspected":
				fmt.Fprintf(stdout, " %s%s |", number(v), ratios(values, r.metric, v))
			default:
				fmt.Fprintf(stdout, " %s |", number(v))
			}
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintln(stdout, "\ninspected cells: (×passthrough, ×mitmproxy) from the same run")
	if admin != "" {
		if m, err := leafMetrics(admin); err == nil {
			fmt.Fprintf(stdout, "leaf cache: %s\n", m)
		}
	}
	if skipped != "" {
		fmt.Fprintf(stdout, "\nskipped mitmproxy: %s\n", firstLine(skipped))
	}
	return nil
}

func ratios(values map[[2]string]float64, metric string, v float64) string {
	var parts []string
	for _, other := range []string{"passthrough", "mitmproxy"} {
		if o, ok := values[[2]string{other, metric}]; ok && o != 0 {
			parts = append(parts, fmt.Sprintf("×%.2f %s", v/o, other))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// startHTTPSUpstream serves /small (1 KiB) and /big?n=BYTES over TLS with HTTP/2 offered.
func startHTTPSUpstream(leaf *tls.Certificate) (string, func(), error) {
	small := make([]byte, 1024)
	chunk := make([]byte, 256<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { w.Write(small) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: upProtos()},
		ReadHeaderTimeout: 10 * time.Second}
	go srv.ServeTLS(ln, "", "")
	return ln.Addr().String(), func() { srv.Close() }, nil
}

// mitmPath runs mitmdump as a regular proxy that verifies the target against the bench's upstream CA.
func mitmPath(ctx context.Context, dir, upCAFile, upPort string) (*httpsPath, error) {
	bin, err := exec.LookPath("mitmdump")
	if err != nil {
		return nil, fmt.Errorf("mitmdump not installed (apt-get install mitmproxy): %w", errNotInstalled)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mitm")
	pr, addr, err := startListening(ctx, port, bin, "--listen-host", "127.0.0.1", "--listen-port", strconv.Itoa(port), "-q",
		"--set", "confdir="+conf, "--set", "ssl_verify_upstream_trusted_ca="+upCAFile, "--set", "flow_detail=0", "--set", "stream_large_bodies=1")
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(conf, "mitmproxy-ca-cert.pem"))
	if err != nil {
		pr.stop()
		return nil, fmt.Errorf("mitmproxy CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &httpsPath{name: "mitmproxy", proxy: addr, host: "localhost:" + upPort, tls: &tls.Config{RootCAs: pool}, procs: []*proc{pr}, pid: pr.cmd.Process.Pid}, nil
}

// client is an HTTP/1.1 client of p with kept-alive connections.
func (p *httpsPath) client(conns int) *http.Client {
	return &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
		Proxy:               http.ProxyURL(&url.URL{Scheme: "http", Host: p.proxy}),
		TLSClientConfig:     p.tls.Clone(),
		MaxIdleConnsPerHost: conns,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1, as in mitmproxy's default
	}}
}

// getRate runs sz.Workers clients that GET /small in a loop for sz.Duration after one warm-up GET
// each, and returns the rate and the median latency.
func getRate(ctx context.Context, p *httpsPath, sz inspectSizes) (float64, time.Duration, error) {
	c := p.client(sz.Workers)
	defer c.CloseIdleConnections()
	u := "https://" + p.host + "/small"
	get := func() error {
		resp, err := c.Get(u)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && (resp.StatusCode != 200 || n != 1024) {
			err = fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
		}
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, sz.Workers)
	for range sz.Workers {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- get() }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, 0, err
		}
	}
	var done atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	stop := time.Now().Add(sz.Duration)
	start := time.Now()
	for range sz.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(stop) && ctx.Err() == nil {
				t := time.Now()
				if err := get(); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t))
				done.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	slices.Sort(lat)
	return float64(done.Load()) / time.Since(start).Seconds(), percentile(lat, 0.5), nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// streamRate downloads sz.Stream bytes sz.Streams times on one connection and returns the median
// rate and the CPU time the proxy's process used per GiB over all of them (-1 when unknown).
func streamRate(ctx context.Context, p *httpsPath, sz inspectSizes) (float64, float64, error) {
	c := p.client(1)
	defer c.CloseIdleConnections()
	cpu0, cpuOK := procCPU(p.pid)
	var rates []float64
	for range sz.Streams {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://%s/big?n=%d", p.host, sz.Stream), nil)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, 0, err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != sz.Stream {
			return 0, 0, fmt.Errorf("got %d of %d bytes: %v", n, sz.Stream, err)
		}
		rates = append(rates, mibps(n, time.Since(start)))
	}
	perGiB := -1.0
	if cpu1, ok := procCPU(p.pid); ok && cpuOK {
		perGiB = (cpu1 - cpu0).Seconds() / (float64(sz.Stream) * float64(sz.Streams) / (1 << 30))
	}
	return median(rates), perGiB, nil
}

// handshakes opens n connections through p (CONNECT to host(i), then a TLS handshake whose server
// name is host(i)'s name) and returns the median time from dialing the proxy to the end of the
// handshake.
func handshakes(ctx context.Context, p *httpsPath, n int, host func(int) string) (time.Duration, error) {
	var ds []time.Duration
	for i := range n {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		h := host(i)
		cfg := p.tls.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(h)
		}
		start := time.Now()
		c, err := net.DialTimeout("tcp", p.proxy, 10*time.Second)
		if err != nil {
			return 0, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", h, h)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			c.Close()
			return 0, fmt.Errorf("CONNECT %s: %v %v", h, resp, err)
		}
		tc := tls.Client(&bufferedConn{Conn: c, r: br}, cfg)
		err = tc.Handshake()
		d := time.Since(start)
		tc.Close()
		if err != nil {
			return 0, fmt.Errorf("TLS with %s: %w", h, err)
		}
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return percentile(ds, 0.5), nil
}

// leafMetrics reads the proxy's leaf cache counters and mint time.
func leafMetrics(admin string) (string, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	get := func(series string) float64 {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			return 0
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	hits := get(`swarm_proxy_inspect_leaf_lookups_total{result="hit"}`)
	misses := get(`swarm_proxy_inspect_leaf_lookups_total{result="miss"}`)
	sum, count := get("swarm_proxy_inspect_leaf_mint_seconds_sum"), get("swarm_proxy_inspect_leaf_mint_seconds_count")
	if count == 0 {
		return "", errors.New("no mint recorded")
	}
	return fmt.Sprintf("%.0f hits, %.0f misses; a mint (P-256 key and signature) takes %.0f µs on average", hits, misses, sum/count*1e6), nil
}

func upProtos() []string {
	if os.Getenv("UP_H1") != "" {
		return []string{"http/1.1"}
	}
	return []string{"h2", "http/1.1"}
}
