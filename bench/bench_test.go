package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestShortRun runs the benchmark in its short mode to prove that it works end to end: every path
// that could start produced its figures and no operation failed. It asserts nothing about speed.
func TestShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts proxies and moves data; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	jsonFile := filepath.Join(t.TempDir(), "bench.json")
	benchFile := filepath.Join(t.TempDir(), "bench.txt")
	var stdout, stderr bytes.Buffer
	if err := run(ctx, []string{"-short", "-json", jsonFile, "-benchfmt", benchFile}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, stderr.String())
	}
	t.Logf("table:\n%s", stdout.String())

	data, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("json output: %v", err)
	}
	if len(rep.Errors) > 0 {
		t.Errorf("errors: %s", strings.Join(rep.Errors, "\n"))
	}
	figures := map[string]map[string]float64{}
	for _, r := range rep.Results {
		if figures[r.Path] == nil {
			figures[r.Path] = map[string]float64{}
		}
		figures[r.Path][r.Metric] = r.Value
	}
	for _, p := range []string{"direct", "proxy"} {
		if figures[p] == nil {
			t.Fatalf("no figures for %s; skipped: %v", p, rep.Skipped)
		}
	}
	for path, fs := range figures {
		if fs[mFailures] != 0 || fs[mStormFail] != 0 {
			t.Errorf("%s: %v failures, %v in the storm", path, fs[mFailures], fs[mStormFail])
		}
		want := []string{mConnP50, mConnP99, mDown, mUp, mParallel, mStormWall, mChurn, mHTTPSmall, mHTTPBig}
		if path != "direct" {
			want = append(want, mIdleRSS)
		}
		for _, m := range want {
			if _, ok := fs[m]; !ok {
				t.Errorf("%s: no %q figure", path, m)
			}
		}
		if !strings.Contains(stdout.String(), "| "+path) && !strings.Contains(stdout.String(), " "+path+" |") {
			t.Errorf("table has no column for %s", path)
		}
	}
	if fs := figures["proxy"]; fs[mDown] <= 0 || fs[mConnP50] <= 0 {
		t.Errorf("proxy figures are not positive: down %v MiB/s, connect p50 %v µs", fs[mDown], fs[mConnP50])
	}
	lines := strings.Count(strings.TrimSpace(readFile(t, benchFile)), "\n") + 1
	if lines != len(rep.Results) {
		t.Errorf("benchfmt has %d lines for %d results", lines, len(rep.Results))
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown path", []string{"-paths", "direct,nginx"}, `unknown path "nginx"`},
		{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
		{"unknown flag", []string{"-fast"}, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestShortInspectRun runs the -inspect measurement in its short mode: the passthrough and inspected
// paths (and mitmproxy, when installed) produce every figure.
func TestShortInspectRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts proxies and moves data; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := run(ctx, []string{"-short", "-inspect"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, stderr.String())
	}
	table := stdout.String()
	t.Logf("table:\n%s", table)
	for _, want := range []string{"| https GET/s (1 KiB) | req/s | ", "| connect p50 (CONNECT+TLS, cold cache) | µs | – | ", "leaf cache: "} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(table, "| – | –") {
		t.Errorf("a path has no figures:\n%s", table)
	}
}
