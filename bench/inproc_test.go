package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

// The benchmarks below run the proxy in-process, as `swarm-proxy proxy` builds it, so that its hot
// paths can be profiled with `go test -bench . -cpuprofile` (the command-line benchmark measures
// the real binary and cannot profile it):
//
//	go test ./bench -run '^$' -bench InProcess -cpuprofile cpu.out && go tool pprof -top bench.test cpu.out

// inProcessProxy starts a proxy.Server on loopback that allows loopback targets and logs to a file.
func inProcessProxy(b *testing.B) (string, *upstream) {
	b.Helper()
	up, err := startUpstream()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(up.close)
	pol, err := policy.Parse("policy.yaml", []byte(loopbackPolicy))
	if err != nil {
		b.Fatal(err)
	}
	holder := policy.NewHolder(pol)
	logw, err := accesslog.OpenFile(filepath.Join(b.TempDir(), "access.log"), accesslog.DefaultRotation)
	if err != nil {
		b.Fatal(err)
	}
	srv := &proxy.Server{Policy: holder, Dialer: &dial.Direct{Policy: holder.Load}, Log: logw,
		Metrics: proxy.NewMetrics(prometheus.NewRegistry()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() {
		srv.Shutdown(context.Background())
		logw.Close()
	})
	return ln.Addr().String(), up
}

func BenchmarkInProcessForwardSmall(b *testing.B) {
	addr, up := inProcessProxy(b)
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr}), MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	target := "http://" + up.http.Addr().String() + "/small"
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(target)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %s", resp.Status)
				return
			}
		}
	})
}

func BenchmarkInProcessConnectEcho(b *testing.B) {
	addr, up := inProcessProxy(b)
	dialFn := connectDialer(addr, "")
	target := up.echo.Addr().String()
	b.ResetTimer()
	for range b.N {
		c, err := dialFn(context.Background(), target)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		if _, err := bufio.NewReader(c).ReadByte(); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
