package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// sizes are the workload of one run.
type sizes struct {
	LatencySamples int           `json:"latency_samples"`
	BulkBytes      int64         `json:"bulk_bytes"`
	Parallel       int           `json:"parallel_streams"`
	ParallelBytes  int64         `json:"parallel_bytes"`
	Storm          int           `json:"storm"`
	Churn          int           `json:"churn"`
	HTTPClients    int           `json:"http_clients"`
	HTTPDuration   time.Duration `json:"http_duration_ns"`
	Idle           int           `json:"idle_tunnels"`
}

var (
	fullSizes = sizes{LatencySamples: 200, BulkBytes: 256 << 20, Parallel: 8, ParallelBytes: 64 << 20,
		Storm: 1000, Churn: 1000, HTTPClients: 16, HTTPDuration: 3 * time.Second, Idle: 1000}
	shortSizes = sizes{LatencySamples: 20, BulkBytes: 4 << 20, Parallel: 8, ParallelBytes: 1 << 20,
		Storm: 50, Churn: 50, HTTPClients: 16, HTTPDuration: 200 * time.Millisecond, Idle: 50}
)

// Timeouts that bound every operation and phase.
const (
	opTimeout    = 20 * time.Second // one dial, echo or request
	phaseTimeout = 60 * time.Second // one phase of one path
)

// Metric names, in table order.
const (
	mConnP50      = "connect p50"
	mConnP95      = "connect p95"
	mConnP99      = "connect p99"
	mDown         = "1 stream down"
	mUp           = "1 stream up"
	mParallel     = "8 streams down"
	mStormWall    = "storm wall"
	mStormFail    = "storm failures"
	mStormConns   = "storm provider conns"
	mChurn        = "churn"
	mHTTPSmall    = "http small"
	mHTTPSmallP50 = "http small p50"
	mHTTPSmallP99 = "http small p99"
	mHTTPBig      = "http 1MiB"
	mHTTPBigP50   = "http 1MiB p50"
	mHTTPBigP99   = "http 1MiB p99"
	mIdleRSS      = "idle RSS/tunnel"
	mFailures     = "failures"
	// CPU time per unit of work: the path's processes (with their descendants), and the bench
	// itself (its clients and upstream servers), which shares the machine's cores with them.
	mDownCPU           = "1 stream down CPU"
	mDownBenchCPU      = "1 stream down CPU (bench)"
	mUpCPU             = "1 stream up CPU"
	mUpBenchCPU        = "1 stream up CPU (bench)"
	mHTTPSmallCPU      = "http small CPU"
	mHTTPSmallBenchCPU = "http small CPU (bench)"
)

// result is one figure of one path.
type result struct {
	Path   string  `json:"path"`
	Metric string  `json:"metric"`
	Unit   string  `json:"unit"`
	Value  float64 `json:"value"`
	// Ratio is Value divided by the direct path's value for the same metric; 0 when there is none.
	Ratio float64 `json:"ratio,omitempty"`
}

// bench is one path under measurement and what has been measured so far.
type bench struct {
	sz   sizes
	up   *upstream
	p    *path
	out  []result
	fail int
	errs []error
	dead bool
	log  func(format string, args ...any)

	lat                 []time.Duration
	churnN              int
	churnT              time.Duration
	down, upl, parallel []float64 // MiB/s of each round
	httpRuns            map[string]*httpRun
	// CPU time used during the single-stream transfers and the small GETs, over all rounds.
	downCPU, upCPU, smallCPU cpuUse
}

// cpuUse adds up the CPU time a path's processes and the bench used over some units of work.
type cpuUse struct {
	path, self time.Duration
	work       float64 // MiB or requests
	bad        bool    // a sample could not be read: no figure
}

// measureCPU runs fn, which returns how many units of work it did, and adds the CPU time that the
// path's processes and the bench used meanwhile to u.
func (b *bench) measureCPU(u *cpuUse, fn func() float64) {
	path0, ok0 := treeCPU(b.p.pids)
	self0, ok1 := procCPU(os.Getpid())
	work := fn()
	path1, ok2 := treeCPU(b.p.pids)
	self1, ok3 := procCPU(os.Getpid())
	if !(ok0 && ok1 && ok2 && ok3) {
		u.bad = true
		return
	}
	u.path += path1 - path0
	u.self += self1 - self0
	u.work += work
}

// perUnit returns the path's and the bench's CPU time per unit of work in unit (a duration such as
// time.Millisecond), and false when there is no figure.
func (u cpuUse) perUnit(unit time.Duration) (path, self float64, ok bool) {
	if u.bad || u.work == 0 {
		return 0, 0, false
	}
	return float64(u.path) / float64(unit) / u.work, float64(u.self) / float64(unit) / u.work, true
}

// httpRun accumulates one plain-HTTP workload over rounds.
type httpRun struct {
	n    int
	wall time.Duration
	ds   []time.Duration
}

func (b *bench) add(metric, unit string, v float64) {
	b.out = append(b.out, result{Path: b.p.name, Metric: metric, Unit: unit, Value: v})
}

func (b *bench) failed(phase string, err error) {
	b.fail++
	if len(b.errs) < 5 {
		b.errs = append(b.errs, fmt.Errorf("%s: %s: %w", b.p.name, phase, err))
	}
}

// Rounds of the bulk and HTTP phases; each figure is the median (bulk) or the total (HTTP) of
// its rounds.
const rounds = 3

// suite measures several paths. Each phase visits the paths in turn, sample by sample or round by
// round, so that load from elsewhere on the machine falls on every path alike and the ratios
// between paths hold up better than the absolute figures.
type suite struct {
	benches []*bench
	log     func(format string, args ...any)
}

func (s *suite) run(ctx context.Context) {
	s.phase(ctx, "idle", func(ctx context.Context, b *bench) { b.idle(ctx) })
	for i := 0; i < s.benches[0].sz.LatencySamples && ctx.Err() == nil; i++ {
		s.phase(ctx, "", func(ctx context.Context, b *bench) { b.latencySample(ctx) })
	}
	s.log("  latency done")
	const churnBlock = 50
	for i := 0; i < s.benches[0].sz.Churn && ctx.Err() == nil; i += churnBlock {
		s.phase(ctx, "", func(ctx context.Context, b *bench) { b.churn(ctx, min(churnBlock, b.sz.Churn-i)) })
	}
	s.log("  churn done")
	s.phase(ctx, "storm", func(ctx context.Context, b *bench) { b.storm(ctx) })
	for r := range rounds {
		s.phase(ctx, fmt.Sprintf("bulk round %d", r+1), func(ctx context.Context, b *bench) { b.bulk(ctx) })
	}
	for r := range rounds {
		s.phase(ctx, fmt.Sprintf("http round %d", r+1), func(ctx context.Context, b *bench) { b.http(ctx) })
	}
	for _, b := range s.benches {
		b.summarize()
	}
}

// phase runs fn for every live path, each bounded by phaseTimeout, and retires paths whose
// processes died.
func (s *suite) phase(ctx context.Context, name string, fn func(context.Context, *bench)) {
	for _, b := range s.benches {
		if b.dead || ctx.Err() != nil {
			continue
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, phaseTimeout)
		fn(pctx, b)
		cancel()
		if name != "" {
			s.log("  %-9s %s %v", b.p.name, name, time.Since(start).Round(time.Millisecond))
		}
		if err := b.p.alive(); err != nil {
			b.dead = true
			b.fail++
			b.errs = append([]error{fmt.Errorf("%s: %w", b.p.name, err)}, b.errs...)
		}
	}
}

// summarize turns what was measured into results.
func (b *bench) summarize() {
	if len(b.lat) > 0 {
		b.add(mConnP50, "µs", us(percentile(b.lat, 0.50)))
		b.add(mConnP95, "µs", us(percentile(b.lat, 0.95)))
		b.add(mConnP99, "µs", us(percentile(b.lat, 0.99)))
	}
	if b.churnN > 0 {
		b.add(mChurn, "cycles/s", float64(b.churnN)/b.churnT.Seconds())
	}
	for _, f := range []struct {
		m  string
		vs []float64
	}{{mDown, b.down}, {mUp, b.upl}, {mParallel, b.parallel}} {
		if len(f.vs) > 0 {
			b.add(f.m, "MiB/s", median(f.vs))
		}
	}
	for _, w := range httpWorkloads {
		r := b.httpRuns[w.path]
		if r == nil || len(r.ds) == 0 {
			continue
		}
		b.add(w.rate, "req/s", float64(r.n)/r.wall.Seconds())
		b.add(w.p50, "µs", us(percentile(r.ds, 0.50)))
		b.add(w.p99, "µs", us(percentile(r.ds, 0.99)))
	}
	for _, c := range []struct {
		u          cpuUse
		path, self string
		unit       time.Duration
		name       string
	}{
		{b.downCPU, mDownCPU, mDownBenchCPU, time.Millisecond, "ms/MiB"},
		{b.upCPU, mUpCPU, mUpBenchCPU, time.Millisecond, "ms/MiB"},
		{b.smallCPU, mHTTPSmallCPU, mHTTPSmallBenchCPU, time.Microsecond, "µs/req"},
	} {
		path, self, ok := c.u.perUnit(c.unit)
		if !ok {
			continue
		}
		if len(b.p.pids) > 0 {
			b.add(c.path, c.name, path)
		}
		b.add(c.self, c.name, self)
	}
	b.add(mFailures, "count", float64(b.fail))
}

// echo opens a tunnel to the echo server, sends one byte and waits for it to come back. The
// connection is returned open.
func (b *bench) echo(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	c, err := b.p.dial(ctx, b.up.echo.Addr().String())
	if err != nil {
		return nil, err
	}
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	var buf [1]byte
	if _, err := c.Write([]byte{'x'}); err != nil {
		c.Close()
		return nil, fmt.Errorf("echo write: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("echo read: %w", err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// latencySample times one dial → tunnel → one-byte echo.
func (b *bench) latencySample(ctx context.Context) {
	start := time.Now()
	c, err := b.echo(ctx)
	if err != nil {
		b.failed("latency", err)
		return
	}
	b.lat = append(b.lat, time.Since(start))
	c.Close()
}

// churn runs n sequential open/echo/close cycles.
func (b *bench) churn(ctx context.Context, n int) {
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		c, err := b.echo(ctx)
		if err != nil {
			b.failed("churn", err)
			continue
		}
		c.Close()
		b.churnN++
	}
	b.churnT += time.Since(start)
}

// storm opens b.sz.Storm tunnels at once; each echoes one byte and stays open until all have.
func (b *bench) storm(ctx context.Context) {
	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		echoed   sync.WaitGroup
		release  = make(chan struct{})
		maxConns atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	sampleDone := make(chan struct{})
	stopSample := make(chan struct{})
	go func() {
		defer close(sampleDone)
		if b.p.providerPid == 0 {
			return
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < int(phaseTimeout/(20*time.Millisecond)); i++ {
			if n, err := tcpConnsTo(b.p.providerPid, b.p.brokerPort); err == nil && int64(n) > maxConns.Load() {
				maxConns.Store(int64(n))
			}
			select {
			case <-stopSample:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	echoed.Add(b.sz.Storm)
	wg.Add(b.sz.Storm)
	for range b.sz.Storm {
		go func() {
			defer wg.Done()
			c, err := b.echo(ctx)
			echoed.Done()
			if err != nil {
				failures.Add(1)
				errOnce.Do(func() { firstErr = err })
				return
			}
			select {
			case <-release:
			case <-ctx.Done():
			}
			c.Close()
		}()
	}
	echoed.Wait()
	wall := time.Since(start)
	close(release)
	wg.Wait()
	close(stopSample)
	<-sampleDone
	if n := failures.Load(); n > 0 {
		b.fail += int(n) - 1
		b.failed("storm", fmt.Errorf("%d of %d failed, first: %w", n, b.sz.Storm, firstErr))
	}
	b.add(mStormWall, "ms", float64(wall.Microseconds())/1000)
	b.add(mStormFail, "count", float64(failures.Load()))
	if b.p.providerPid != 0 {
		b.add(mStormConns, "count", float64(maxConns.Load()))
		if maxConns.Load() != 1 {
			b.log("  %-9s storm: the provider held %d connections to the broker; its log:\n%s", b.p.name, maxConns.Load(), b.p.procs[len(b.p.procs)-1].log())
		}
	}
}

func (b *bench) bulk(ctx context.Context) {
	mib := float64(b.sz.BulkBytes) / (1 << 20)
	b.measureCPU(&b.downCPU, func() float64 {
		d, err := b.transfer(ctx, cmdDown, b.sz.BulkBytes)
		if err != nil {
			b.failed("bulk down", err)
			return 0
		}
		b.down = append(b.down, mibps(b.sz.BulkBytes, d))
		return mib
	})
	b.measureCPU(&b.upCPU, func() float64 {
		d, err := b.transfer(ctx, cmdUp, b.sz.BulkBytes)
		if err != nil {
			b.failed("bulk up", err)
			return 0
		}
		b.upl = append(b.upl, mibps(b.sz.BulkBytes, d))
		return mib
	})
	var wg sync.WaitGroup
	errs := make([]error, b.sz.Parallel)
	start := time.Now()
	for i := range b.sz.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = b.transfer(ctx, cmdDown, b.sz.ParallelBytes)
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		b.failed("parallel", err)
		return
	}
	b.parallel = append(b.parallel, mibps(int64(b.sz.Parallel)*b.sz.ParallelBytes, wall))
}

// transfer moves size bytes through one tunnel to the data server in the direction of cmd and
// returns how long the bytes took, from the request to the last byte (down) or the server's
// acknowledgement (up).
func (b *bench) transfer(ctx context.Context, cmd byte, size int64) (time.Duration, error) {
	dctx, cancel := context.WithTimeout(ctx, opTimeout)
	c, err := b.p.dial(dctx, b.up.data.Addr().String())
	cancel()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	var hdr [9]byte
	hdr[0] = cmd
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	start := time.Now()
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, fmt.Errorf("transfer request: %w", err)
	}
	switch cmd {
	case cmdDown:
		if _, err := readN(c, size); err != nil {
			return 0, fmt.Errorf("transfer down: %w", err)
		}
	case cmdUp:
		for left := size; left > 0; {
			n := min(left, int64(len(dataBuf)))
			if _, err := c.Write(dataBuf[:n]); err != nil {
				return 0, fmt.Errorf("transfer up: %w", err)
			}
			left -= n
		}
		var ack [1]byte
		if _, err := io.ReadFull(c, ack[:]); err != nil {
			return 0, fmt.Errorf("transfer up: acknowledgement: %w", err)
		}
	}
	return time.Since(start), nil
}

var httpWorkloads = []struct{ path, rate, p50, p99 string }{
	{"/small", mHTTPSmall, mHTTPSmallP50, mHTTPSmallP99},
	{"/1m", mHTTPBig, mHTTPBigP50, mHTTPBigP99},
}

// http runs one round of each plain-HTTP workload.
func (b *bench) http(ctx context.Context) {
	if b.httpRuns == nil {
		b.httpRuns = map[string]*httpRun{}
	}
	for _, w := range httpWorkloads {
		r := b.httpRuns[w.path]
		if r == nil {
			r = &httpRun{}
			b.httpRuns[w.path] = r
		}
		load := func() float64 {
			n := r.n
			if err := b.httpLoad(ctx, "http://"+b.up.http.Addr().String()+w.path, r); err != nil {
				b.failed("http "+w.path, err)
			}
			return float64(r.n - n)
		}
		if w.rate == mHTTPSmall {
			b.measureCPU(&b.smallCPU, load)
		} else {
			load()
		}
	}
}

// httpLoad runs HTTPClients keep-alive clients against url for a round's share of HTTPDuration and
// adds the requests and their latencies to r.
func (b *bench) httpLoad(ctx context.Context, url string, r *httpRun) error {
	const maxPerClient = 1 << 20
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		all  []time.Duration
		errs []error
	)
	start := time.Now()
	end := start.Add(b.sz.HTTPDuration / rounds)
	for range b.sz.HTTPClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ds []time.Duration
			var fails []error
			c, err := b.newHTTPClient(url)
			if err != nil {
				fails = append(fails, err)
			}
			for i := 0; err == nil && i < maxPerClient && time.Now().Before(end) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := c.get(ctx); err != nil {
					fails = append(fails, err)
					continue
				}
				ds = append(ds, time.Since(t0))
			}
			if c != nil {
				c.close()
			}
			mu.Lock()
			all = append(all, ds...)
			errs = append(errs, fails...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.wall += time.Since(start)
	r.n += len(all)
	r.ds = append(r.ds, all...)
	if len(errs) > 0 {
		b.fail += len(errs) - 1
		return fmt.Errorf("%d requests failed, first: %w", len(errs), errs[0])
	}
	return nil
}

// httpClient is one keep-alive HTTP/1.1 client, the way a load generator such as wrk is one: the
// request is written from a prepared buffer and the response parsed with net/http's reader, on the
// caller's goroutine. http.Client costs the benchmark more CPU per request (its per-connection read
// and write goroutines), and on a two-core machine every cycle the load generator spends is taken
// from the path under test.
type httpClient struct {
	b    *bench
	addr string // where to connect: the HTTP proxy, or the target through the path's dialer
	// proxied is set for an HTTP proxy: connect to it directly and send absolute-form requests.
	proxied bool
	req     []byte // the request, in absolute form for an HTTP proxy
	conn    net.Conn
	br      *bufio.Reader
}

func (b *bench) newHTTPClient(rawURL string) (*httpClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	c := &httpClient{b: b, addr: u.Host}
	target, auth := u.RequestURI(), ""
	if pu := b.p.proxyURL; pu != nil && pu.Scheme == "http" {
		c.addr, target, c.proxied = pu.Host, rawURL, true
		if pu.User != nil {
			pass, _ := pu.User.Password()
			auth = "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(pu.User.Username()+":"+pass)) + "\r\n"
		}
	}
	c.req = []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: swarm-proxy-bench\r\n%s\r\n", target, u.Host, auth))
	return c, nil
}

// get sends the request and reads the whole response, connecting first when needed. A request
// on a kept-alive connection that the server closed before answering is sent again on a new
// connection, as http.Transport does: tinyproxy closes its side after each response.
func (c *httpClient) get(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		reused := c.conn != nil
		if !reused {
			if err := c.connect(ctx); err != nil {
				return err
			}
		}
		c.conn.SetDeadline(time.Now().Add(opTimeout))
		resp, err := c.roundTrip()
		if err != nil {
			c.close()
			if reused && attempt == 0 && errors.Is(err, errNothingBack) {
				continue
			}
			return err
		}
		if resp.Close {
			c.close()
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
}

func (c *httpClient) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var err error
	if c.proxied {
		c.conn, err = (&net.Dialer{}).DialContext(dctx, "tcp", c.addr)
	} else {
		c.conn, err = c.b.p.dial(dctx, c.addr) // direct, or through a SOCKS5 path
	}
	if err != nil {
		c.conn = nil
		return fmt.Errorf("connect: %w", err)
	}
	c.br = bufio.NewReaderSize(c.conn, 32<<10)
	return nil
}

// errNothingBack is a connection closed before any byte of the response arrived.
var errNothingBack = errors.New("connection closed before the response")

func (c *httpClient) roundTrip() (*http.Response, error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return nil, fmt.Errorf("send request: %w: %w", errNothingBack, err)
	}
	if _, err := c.br.Peek(1); err != nil {
		return nil, fmt.Errorf("read response: %w: %w", errNothingBack, err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return resp, nil
}

func (c *httpClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// idle measures the path's resident memory growth per open idle tunnel.
func (b *bench) idle(ctx context.Context) {
	if len(b.p.pids) == 0 {
		return
	}
	// Warm up so that one-time allocations do not count against the tunnels.
	for range 20 {
		if c, err := b.echo(ctx); err == nil {
			c.Close()
		}
	}
	rss := func() ([]int64, error) {
		out := make([]int64, len(b.p.pids))
		for i, pid := range b.p.pids {
			v, err := treeRSS(pid)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	before, err := rss()
	if err != nil {
		b.failed("idle", err)
		return
	}
	conns := make([]net.Conn, 0, b.sz.Idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < b.sz.Idle && ctx.Err() == nil; i++ {
		c, err := b.echo(ctx)
		if err != nil {
			b.failed("idle", err)
			continue
		}
		conns = append(conns, c)
	}
	after, err := rss()
	if err != nil {
		b.failed("idle", err)
		return
	}
	if len(conns) == 0 {
		return
	}
	var total int64
	for i, pid := range b.p.pids {
		total += after[i] - before[i]
		b.log("  %-9s idle: pid %d %+.1f KiB per tunnel", b.p.name, pid, float64(after[i]-before[i])/1024/float64(len(conns)))
	}
	b.add(mIdleRSS, "KiB", float64(total)/1024/float64(len(conns)))
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
