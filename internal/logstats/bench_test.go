package logstats

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// syntheticLog writes n records shaped like the proxy's: a few hundred hosts, dozens of clients
// and sessions, paths, reasons and request ids, as accesslog.Writer encodes them.
func syntheticLog(tb testing.TB, n int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w := accesslog.NewWriter(&buf)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	methods := []string{"CONNECT", "CONNECT", "CONNECT", "GET", "POST"}
	for i := range n {
		host := fmt.Sprintf("svc%d.example%d.com", rng.IntN(40), rng.IntN(10))
		rec := &accesslog.Record{
			Timestamp:  start.Add(time.Duration(i) * 3 * time.Millisecond),
			RequestID:  fmt.Sprintf("%016x", rng.Uint64()),
			Client:     fmt.Sprintf("10.0.%d.%d", rng.IntN(4), rng.IntN(20)),
			Session:    fmt.Sprintf("sess-%d", rng.IntN(30)),
			Method:     methods[rng.IntN(len(methods))],
			Host:       host,
			Port:       443,
			Status:     200,
			Decision:   accesslog.DecisionAllow,
			Mode:       "discovery",
			Reason:     "discovery mode allows what is not denied",
			Upstream:   fmt.Sprintf("203.0.113.%d:443", rng.IntN(250)),
			BytesIn:    rng.Int64N(1 << 20),
			BytesOut:   rng.Int64N(1 << 14),
			DurationMS: float64(rng.IntN(100000)) / 1000,
		}
		if rec.Method != "CONNECT" {
			rec.Port = 80
			rec.Path = fmt.Sprintf("/api/v%d/items/%d", rng.IntN(3), rng.IntN(100000))
		}
		if rng.IntN(20) == 0 {
			rec.Decision, rec.Status, rec.Error = accesslog.DecisionDeny, 403, "no_rule_matched"
			rec.Rule, rec.Reason = "", "no allow rule matches "+host+":443 (mode: enforce)"
		}
		if err := w.Write(rec); err != nil {
			tb.Fatal(err)
		}
	}
	return buf.Bytes()
}

// BenchmarkDomains measures the whole "logs domains" pipeline: read, decode, filter, aggregate.
// Run it on one core: go test -run '^$' -bench . -cpu 1 ./internal/logstats
func BenchmarkDomains(b *testing.B) {
	data := syntheticLog(b, 50000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var f Filter
	for b.Loop() {
		d := NewDomains()
		st, err := Read(context.Background(), []Source{StreamSource("bench", bytes.NewReader(data))}, func(e *Entry) {
			if f.Match(e) {
				d.Add(e)
			}
		})
		if err != nil || st.Records != 50000 || d.Len() == 0 {
			b.Fatalf("records %d, hosts %d, err %v", st.Records, d.Len(), err)
		}
	}
}

// BenchmarkEncodingJSON is the baseline the hand-written decoder replaces.
func BenchmarkEncodingJSON(b *testing.B) {
	data := syntheticLog(b, 50000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		for line := range bytes.Lines(data) {
			var r accesslog.Record
			if err := json.Unmarshal(line, &r); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkDomainsGzip is BenchmarkDomains on a gzip-compressed log (rotated files); MB/s counts
// uncompressed bytes.
func BenchmarkDomainsGzip(b *testing.B) {
	data := syntheticLog(b, 50000)
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(data)
	zw.Close()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		d := NewDomains()
		st, err := Read(context.Background(), []Source{StreamSource("bench.gz", bytes.NewReader(zb.Bytes()))}, d.Add)
		if err != nil || st.Records != 50000 {
			b.Fatalf("records %d, err %v", st.Records, err)
		}
	}
}

// TestReadStreamsInBoundedMemory: reading a log much larger than the heap it may use keeps the heap
// flat; memory follows the number of distinct hosts and clients, not the size of the log.
func TestReadStreamsInBoundedMemory(t *testing.T) {
	block := syntheticLog(t, 20000)
	const copies = 12
	readers := make([]io.Reader, copies)
	for i := range readers {
		readers[i] = bytes.NewReader(block)
	}
	runtime.GC()
	var ms runtime.MemStats
	var peak uint64
	n := 0
	d := NewDomains()
	st, err := Read(context.Background(), []Source{StreamSource("big", io.MultiReader(readers...))}, func(e *Entry) {
		d.Add(e)
		if n++; n%50000 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	})
	if err != nil || st.Records != 20000*copies {
		t.Fatalf("records %d, err %v", st.Records, err)
	}
	input := uint64(len(block) * copies)
	// The block itself is in memory once; everything else must stay far below the input.
	if limit := uint64(len(block)) + 32<<20; peak > limit {
		t.Fatalf("heap peaked at %d MiB while reading %d MiB: want under %d MiB", peak>>20, input>>20, limit>>20)
	}
	t.Logf("read %d MiB with a heap of at most %d MiB", input>>20, peak>>20)
}
