package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestSummariseRealRun runs go test -json on a fixture package with a passing, failing, skipped and
// parent test, and checks the counts, that the failure's output and the skip reasons are shown, and
// that the closing line is the last one.
func TestSummariseRealRun(t *testing.T) {
	var stream bytes.Buffer
	cmd := exec.Command("go", "test", "-json", "-count=1", "./testdata/fixture")
	cmd.Stdout = &stream
	if err := cmd.Run(); err == nil {
		t.Fatal("go test of the fixture passed; it has a failing test")
	}
	var out bytes.Buffer
	c, err := summarise(&stream, &out)
	if err != nil {
		t.Fatal(err)
	}
	want := counts{passed: 3, failed: 1, skipped: 2, packages: 1}
	if c != want {
		t.Errorf("counts = %+v, want %+v\noutput:\n%s", c, want, out.String())
	}
	text := out.String()
	for _, s := range []string{
		"=== FAIL github.com/swarm-proxy/swarm-proxy/scripts/testsummary/testdata/fixture TestFail",
		"boom: the fixture fails on purpose",
		"TestSkip: fixture_test.go:10: sometool is not installed",
		"TestSub/b: fixture_test.go:14: needs root",
		"FAIL\tgithub.com/swarm-proxy/swarm-proxy/scripts/testsummary/testdata/fixture",
		"6 tests ran in 1 packages",
	} {
		if !strings.Contains(text, s) {
			t.Errorf("output lacks %q:\n%s", s, text)
		}
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if last := lines[len(lines)-1]; last != "3 passed, 1 failed, 2 skipped" {
		t.Errorf("last line = %q", last)
	}
	if strings.Contains(text, "TestPass") {
		t.Errorf("a passing test's output is shown:\n%s", text)
	}
}

// TestSummariseBrokenStreams covers what go test prints when it cannot run a package's tests: a
// package failure without a failing test counts as one failure, a test whose events stop without an
// end counts as failed, and lines that are not events pass through.
func TestSummariseBrokenStreams(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   counts
		output []string
	}{
		{
			name: "build failure",
			in: `{"ImportPath":"x [x.test]","Action":"build-output","Output":"x.go:3:1: syntax error\n"}
{"ImportPath":"x [x.test]","Action":"build-fail"}
{"Action":"start","Package":"x"}
{"Action":"output","Package":"x","Output":"FAIL\tx [build failed]\n"}
{"Action":"fail","Package":"x","Elapsed":0}
`,
			want:   counts{failed: 1, packages: 1},
			output: []string{"x.go:3:1: syntax error", "FAIL\tx [build failed]", "0 passed, 1 failed, 0 skipped"},
		},
		{
			name: "test cut off",
			in: `{"Action":"run","Package":"x","Test":"TestHang"}
{"Action":"output","Package":"x","Test":"TestHang","Output":"=== RUN   TestHang\n"}
{"Action":"output","Package":"x","Test":"TestHang","Output":"    hang_test.go:9: waiting\n"}
`,
			want:   counts{failed: 1},
			output: []string{"=== FAIL x TestHang (did not finish)", "hang_test.go:9: waiting"},
		},
		{
			name:   "plain lines",
			in:     "# x\nvet: x.go:1: something\n",
			output: []string{"# x\nvet: x.go:1: something\n", "0 passed, 0 failed, 0 skipped"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c, err := summarise(strings.NewReader(tt.in), &out)
			if err != nil {
				t.Fatal(err)
			}
			if c != tt.want {
				t.Errorf("counts = %+v, want %+v", c, tt.want)
			}
			for _, s := range tt.output {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
}
