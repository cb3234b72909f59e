// Command bench measures what swarm-proxy costs against a direct connection and against the
// programs users would pick instead (Squid, tinyproxy, OpenSSH reverse dynamic forwarding), all
// on loopback: connect latency, bulk throughput, a storm of concurrent tunnels, churn, plain-HTTP
// request rate and resident memory per idle tunnel. It starts its own upstream servers and its
// own proxies (generated configurations in a temporary directory) and prints one table.
//
//	go run ./bench            # the full run, a few minutes
//	go run ./bench -short     # small sizes, seconds; what the test suite runs
//	go run ./bench -json out.json -benchfmt out.txt   # for benchstat across runs
//	go run ./bench -inspect   # HTTPS inspection against passthrough and mitmproxy
//
// See docs/performance.md for the method and the figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// allPaths are the paths a run measures by default, in table order.
var allPaths = []string{"direct", "proxy", "bare-go", "tunnel", "tunnel-socks", "squid", "tinyproxy", "ssh", "ns-connect", "ns-transparent"}

// report is what -json writes.
type report struct {
	Start   time.Time         `json:"start"`
	Short   bool              `json:"short"`
	Sizes   sizes             `json:"sizes"`
	Results []result          `json:"results"`
	Skipped map[string]string `json:"skipped,omitempty"`
	Errors  []string          `json:"errors,omitempty"`
}

// run is the benchmark command: it parses args, measures and prints the table to stdout and its
// progress to stderr. It returns an error when a path of swarm-proxy's own had failures.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	short := fs.Bool("short", false, "small sizes and few samples: proves the benchmark works, measures little")
	jsonFile := fs.String("json", "", "also write the results as JSON to this file")
	benchFile := fs.String("benchfmt", "", "also write the results in Go benchmark format (for benchstat) to this file")
	pathList := fs.String("paths", strings.Join(allPaths, ","), "comma-separated paths to measure")
	idle := fs.Int("idle", 0, "idle tunnels for the memory figure (default: 1000, 50 with -short)")
	timeout := fs.Duration("timeout", 10*time.Minute, "bound on the whole measurement")
	binary := fs.String("binary", "", "swarm-proxy binary (default: build ./cmd/swarm-proxy without -race)")
	bareBinary := fs.String("bare-binary", "", "bareproxy binary (default: build ./bench/bareproxy without -race)")
	inspectRun := fs.Bool("inspect", false, "measure HTTPS inspection instead: an inspected rule against passthrough and mitmproxy (mitmdump, when installed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	names := strings.Split(*pathList, ",")
	for _, n := range names {
		if !slices.Contains(allPaths, n) {
			return fmt.Errorf("-paths: unknown path %q (want some of %s)", n, strings.Join(allPaths, ","))
		}
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }

	sz := fullSizes
	if *short {
		sz = shortSizes
	}
	if *idle > 0 {
		sz.Idle = *idle
	}
	if err := raiseFileLimit(sz); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "swarm-proxy-bench")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // proxies that drop privileges must reach their directories
	e := env{dir: dir, binary: *binary, bareBinary: *bareBinary}
	if *inspectRun {
		if e.binary == "" {
			e.binary = filepath.Join(dir, "swarm-proxy")
			logf("building swarm-proxy")
			if err := goBuild(ctx, e.binary, "github.com/swarm-proxy/swarm-proxy/cmd/swarm-proxy"); err != nil {
				return err
			}
		}
		return runInspect(ctx, e, *short, stdout, logf)
	}
	if e.binary == "" && slices.ContainsFunc(names, func(n string) bool {
		return n == "proxy" || strings.HasPrefix(n, "tunnel") || strings.HasPrefix(n, "ns-")
	}) {
		e.binary = filepath.Join(dir, "swarm-proxy")
		logf("building swarm-proxy")
		if err := goBuild(ctx, e.binary, "github.com/swarm-proxy/swarm-proxy/cmd/swarm-proxy"); err != nil {
			return err
		}
	}
	if e.bareBinary == "" && slices.Contains(names, "bare-go") {
		e.bareBinary = filepath.Join(dir, "bareproxy")
		if err := goBuild(ctx, e.bareBinary, "github.com/swarm-proxy/swarm-proxy/bench/bareproxy"); err != nil {
			return err
		}
	}
	up, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.close()

	rep := report{Start: time.Now().UTC(), Short: *short, Sizes: sz, Skipped: map[string]string{}}
	var order []string
	var benches []*bench
	defer func() {
		for _, b := range benches {
			b.p.stop()
		}
	}()
	for _, name := range names {
		p, err := newPath(ctx, name, e)
		if errors.Is(err, errNotInstalled) {
			rep.Skipped[name] = "not installed"
			logf("%s: not installed, skipped", name)
			continue
		}
		if err != nil {
			if own(name) {
				return fmt.Errorf("start %s: %w", name, err)
			}
			rep.Skipped[name] = err.Error()
			logf("%s: skipped: %v", name, err)
			continue
		}
		pathUp := up
		if p.up != nil {
			pathUp = p.up
		}
		benches = append(benches, &bench{sz: sz, up: pathUp, p: p, log: logf})
		order = append(order, p.name)
	}
	if len(benches) == 0 {
		return errors.New("no path to measure")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	(&suite{benches: benches, log: logf}).run(ctx)
	logf("measured in %v", time.Since(start).Round(time.Second))
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	var ownFailures error
	for _, b := range benches {
		rep.Results = append(rep.Results, b.out...)
		for _, err := range b.errs {
			rep.Errors = append(rep.Errors, err.Error())
		}
		if b.fail > 0 && own(b.p.name) {
			ownFailures = errors.Join(ownFailures, fmt.Errorf("%s: %d failures: %w", b.p.name, b.fail, errors.Join(b.errs...)))
		}
	}
	setRatios(rep.Results)
	writeTable(stdout, rep, order)
	if *jsonFile != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		if err := os.WriteFile(*jsonFile, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("write json: %w", err)
		}
	}
	if *benchFile != "" {
		if err := os.WriteFile(*benchFile, benchFormat(rep.Results), 0o644); err != nil {
			return fmt.Errorf("write benchfmt: %w", err)
		}
	}
	return ownFailures
}

// own reports whether a path is swarm-proxy's (its failures fail the run) rather than a comparison.
// goBuild builds pkg into out, without the race detector whatever the caller runs with.
func goBuild(ctx context.Context, out, pkg string) error {
	build := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if msg, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", pkg, err, msg)
	}
	return nil
}

func own(name string) bool {
	return name == "direct" || name == "proxy" || name == "tunnel" || name == "tunnel-socks"
}

func newPath(ctx context.Context, name string, e env) (*path, error) {
	switch name {
	case "direct":
		return directPath(), nil
	case "proxy":
		return swarmProxyPath(e)
	case "bare-go":
		return barePath(e)
	case "tunnel":
		return tunnelPath(e, false)
	case "tunnel-socks":
		return tunnelPath(e, true)
	case "squid":
		return squidPath(ctx, e)
	case "tinyproxy":
		return tinyproxyPath(ctx, e)
	case "ssh":
		return sshPath(ctx, e)
	case "ns-connect":
		return netnsPath(ctx, e, false)
	case "ns-transparent":
		return netnsPath(ctx, e, true)
	}
	return nil, fmt.Errorf("unknown path %q", name)
}

// raiseFileLimit lifts the soft open-file limit to the hard one: the idle and storm phases hold
// thousands of sockets in this process and in the proxies, which inherit the limit.
func raiseFileLimit(sz sizes) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("file limit: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("file limit: %w", err)
	}
	// Each idle or storm tunnel holds a client and an upstream socket here, plus spares.
	need := uint64(4*max(sz.Idle, sz.Storm) + 256)
	if lim.Cur < need {
		return fmt.Errorf("file limit: RLIMIT_NOFILE hard limit %d is below the %d this run needs (raise it with ulimit -Hn)", lim.Max, need)
	}
	return nil
}

// setRatios divides each figure by the direct path's figure for the same metric.
func setRatios(rs []result) {
	direct := map[string]float64{}
	for _, r := range rs {
		if r.Path == "direct" {
			direct[r.Metric] = r.Value
		}
	}
	for i := range rs {
		if d := direct[rs[i].Metric]; d != 0 {
			rs[i].Ratio = rs[i].Value / d
		}
	}
}

var metricOrder = []string{mConnP50, mConnP95, mConnP99, mDown, mUp, mParallel, mStormWall, mStormFail,
	mStormConns, mChurn, mHTTPSmall, mHTTPSmallP50, mHTTPSmallP99, mHTTPBig, mHTTPBigP50, mHTTPBigP99,
	mIdleRSS, mDownCPU, mDownBenchCPU, mUpCPU, mUpBenchCPU, mHTTPSmallCPU, mHTTPSmallBenchCPU, mFailures}

// writeTable prints one Markdown table: a row per metric, a column per path, each cell the value
// and its ratio to direct.
func writeTable(w io.Writer, rep report, order []string) {
	byKey := map[[2]string]result{}
	units := map[string]string{}
	for _, r := range rep.Results {
		byKey[[2]string{r.Path, r.Metric}] = r
		units[r.Metric] = r.Unit
	}
	fmt.Fprintf(w, "| metric | unit | %s |\n", strings.Join(order, " | "))
	fmt.Fprintf(w, "|---|---|%s\n", strings.Repeat("---:|", len(order)))
	for _, m := range metricOrder {
		if units[m] == "" {
			continue
		}
		cells := make([]string, len(order))
		for i, p := range order {
			r, ok := byKey[[2]string{p, m}]
			switch {
			case !ok:
				cells[i] = "–"
			case r.Ratio != 0 && p != "direct":
				cells[i] = fmt.Sprintf("%s (×%.2f)", number(r.Value), r.Ratio)
			default:
				cells[i] = number(r.Value)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", m, units[m], strings.Join(cells, " | "))
	}
	for _, name := range slices.Sorted(maps.Keys(rep.Skipped)) {
		fmt.Fprintf(w, "\nskipped %s: %s\n", name, firstLine(rep.Skipped[name]))
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "\nerror: %s\n", firstLine(e))
	}
}

func number(v float64) string {
	switch {
	case v >= 100 || v == float64(int64(v)):
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// benchFormat writes results as Go benchmark lines, one per figure, so that benchstat can compare
// and summarise several runs: BenchmarkConnectP50/path=proxy 1 123.4 µs.
func benchFormat(rs []result) []byte {
	var b strings.Builder
	for _, r := range rs {
		name := strings.NewReplacer(" ", "_", "/", "_").Replace(r.Metric)
		path := strings.ReplaceAll(r.Path, " ", "")
		fmt.Fprintf(&b, "Benchmark%s/path=%s 1 %g %s\n", name, path, r.Value, r.Unit)
	}
	return []byte(b.String())
}
