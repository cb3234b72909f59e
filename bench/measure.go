package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

// bench runs every measurement against one path.
type bench struct {
	sz   sizes
	up   *upstream
	p    *path
	out  []result
	fail int
	errs []error
	log  func(format string, args ...any)
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

// run measures the path. Memory comes first, while the processes are fresh.
func (b *bench) run(ctx context.Context) {
	phases := []struct {
		name string
		fn   func(context.Context)
	}{
		{"idle", b.idle}, {"latency", b.latency}, {"churn", b.churn}, {"storm", b.storm},
		{"bulk", b.bulk}, {"http", b.http},
	}
	for _, ph := range phases {
		if ctx.Err() != nil {
			b.failed(ph.name, ctx.Err())
			break
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, phaseTimeout)
		ph.fn(pctx)
		cancel()
		b.log("  %-8s %s %v", b.p.name, ph.name, time.Since(start).Round(time.Millisecond))
		if err := b.p.alive(); err != nil {
			b.failed(ph.name, err)
			break
		}
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

func (b *bench) latency(ctx context.Context) {
	var ds []time.Duration
	for i := 0; i < b.sz.LatencySamples && ctx.Err() == nil; i++ {
		start := time.Now()
		c, err := b.echo(ctx)
		if err != nil {
			b.failed("latency", err)
			continue
		}
		ds = append(ds, time.Since(start))
		c.Close()
	}
	if len(ds) == 0 {
		return
	}
	b.add(mConnP50, "µs", us(percentile(ds, 0.50)))
	b.add(mConnP95, "µs", us(percentile(ds, 0.95)))
	b.add(mConnP99, "µs", us(percentile(ds, 0.99)))
}

func (b *bench) churn(ctx context.Context) {
	start := time.Now()
	done := 0
	for i := 0; i < b.sz.Churn && ctx.Err() == nil; i++ {
		c, err := b.echo(ctx)
		if err != nil {
			b.failed("churn", err)
			continue
		}
		c.Close()
		done++
	}
	b.add(mChurn, "cycles/s", float64(done)/time.Since(start).Seconds())
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
	}
}

func (b *bench) bulk(ctx context.Context) {
	if d, err := b.transfer(ctx, cmdDown, b.sz.BulkBytes); err != nil {
		b.failed("bulk down", err)
	} else {
		b.add(mDown, "MiB/s", mibps(b.sz.BulkBytes, d))
	}
	if d, err := b.transfer(ctx, cmdUp, b.sz.BulkBytes); err != nil {
		b.failed("bulk up", err)
	} else {
		b.add(mUp, "MiB/s", mibps(b.sz.BulkBytes, d))
	}
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
	b.add(mParallel, "MiB/s", mibps(int64(b.sz.Parallel)*b.sz.ParallelBytes, wall))
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

func (b *bench) http(ctx context.Context) {
	for _, w := range []struct{ path, rate, p50, p99 string }{
		{"/small", mHTTPSmall, mHTTPSmallP50, mHTTPSmallP99},
		{"/1m", mHTTPBig, mHTTPBigP50, mHTTPBigP99},
	} {
		rate, ds, err := b.httpLoad(ctx, "http://"+b.up.http.Addr().String()+w.path)
		if err != nil {
			b.failed("http "+w.path, err)
		}
		if len(ds) == 0 {
			continue
		}
		b.add(w.rate, "req/s", rate)
		b.add(w.p50, "µs", us(percentile(ds, 0.50)))
		b.add(w.p99, "µs", us(percentile(ds, 0.99)))
	}
}

// httpLoad runs HTTPClients keep-alive clients against url for HTTPDuration and returns the
// request rate and every request's latency.
func (b *bench) httpLoad(ctx context.Context, url string) (float64, []time.Duration, error) {
	tr := &http.Transport{
		MaxIdleConnsPerHost: b.sz.HTTPClients,
		MaxConnsPerHost:     b.sz.HTTPClients,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	if b.p.proxyURL != nil {
		tr.Proxy = http.ProxyURL(b.p.proxyURL)
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: opTimeout}
	const maxPerClient = 1 << 20
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		all  []time.Duration
		errs []error
	)
	start := time.Now()
	end := start.Add(b.sz.HTTPDuration)
	for range b.sz.HTTPClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ds []time.Duration
			var fails []error
			for i := 0; i < maxPerClient && time.Now().Before(end) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				err := get(ctx, client, url)
				if err != nil {
					fails = append(fails, err)
					continue
				}
				ds = append(ds, time.Since(t0))
			}
			mu.Lock()
			all = append(all, ds...)
			errs = append(errs, fails...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if len(errs) > 0 {
		b.fail += len(errs) - 1
		return float64(len(all)) / wall.Seconds(), all, fmt.Errorf("%d requests failed, first: %w", len(errs), errs[0])
	}
	return float64(len(all)) / wall.Seconds(), all, nil
}

func get(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
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
	before, err := treeRSS(b.p.pids...)
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
	after, err := treeRSS(b.p.pids...)
	if err != nil {
		b.failed("idle", err)
		return
	}
	if len(conns) == 0 {
		return
	}
	b.add(mIdleRSS, "KiB", float64(after-before)/1024/float64(len(conns)))
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
