// Command testsummary reads `go test -json` on stdin and prints what a person needs from a whole run:
// each package's ok/FAIL line as it finishes, the full output of every failed test, the reason of every
// skipped test, and a closing line "N passed, N failed, N skipped". It exits 1 when anything failed.
//
// Tests are counted one by one, subtests included; a package that failed without a failing test (a
// build error, a panic outside a test, a timeout) counts as one failure.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	s, err := summarise(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
	if s.failed > 0 {
		os.Exit(1)
	}
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output events name the package being built here
}

// counts are the figures of a run.
type counts struct {
	passed, failed, skipped, packages int
}

// summariser holds the output of each running test until it ends: printed when it fails, its last
// lines kept when it is skipped, dropped when it passes.
type summariser struct {
	out      io.Writer
	counts   counts
	output   map[string][]string // package + "\x00" + test → output lines so far
	testFail map[string]bool     // package → at least one of its tests failed
	skips    []string
}

func summarise(in io.Reader, out io.Writer) (counts, error) {
	s := &summariser{out: out, output: map[string][]string{}, testFail: map[string]bool{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event (go vet or the toolchain writing around -json): show it as it is.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		s.handle(e)
	}
	if err := sc.Err(); err != nil {
		return s.counts, fmt.Errorf("read go test -json: %w", err)
	}
	s.finish()
	return s.counts, nil
}

func (s *summariser) handle(e event) {
	if e.Action == "build-output" {
		fmt.Fprint(s.out, e.Output)
		return
	}
	key := e.Package + "\x00" + e.Test
	switch e.Action {
	case "output":
		if e.Test == "" {
			// Package-level output: the ok/FAIL line, a panic outside a test, coverage. Kept until the
			// package ends: a failed package shows it all, a passing one only its summary line.
			s.output[key] = append(s.output[key], e.Output)
			return
		}
		s.output[key] = append(s.output[key], e.Output)
	case "pass":
		if e.Test == "" {
			s.counts.packages++
			s.printPackageSummary(key)
		} else {
			s.counts.passed++
		}
		delete(s.output, key)
	case "skip":
		if e.Test == "" {
			// A package without test files, or one whose tests were all skipped.
			s.counts.packages++
			s.printPackageSummary(key)
		} else {
			s.counts.skipped++
			s.skips = append(s.skips, e.Package+" "+e.Test+": "+skipReason(s.output[key]))
		}
		delete(s.output, key)
	case "fail":
		if e.Test == "" {
			s.counts.packages++
			if !s.testFail[e.Package] {
				s.counts.failed++
			}
			for _, l := range s.output[key] {
				fmt.Fprint(s.out, l)
			}
		} else {
			s.counts.failed++
			s.testFail[e.Package] = true
			fmt.Fprintf(s.out, "=== FAIL %s %s\n", e.Package, e.Test)
			for _, l := range s.output[key] {
				fmt.Fprint(s.out, l)
			}
		}
		delete(s.output, key)
	}
}

// printPackageSummary prints the lines go test itself prints for a finished package ("ok  pkg 1.2s",
// "?  pkg [no test files]").
func (s *summariser) printPackageSummary(key string) {
	for _, l := range s.output[key] {
		if strings.HasPrefix(l, "ok  ") || strings.HasPrefix(l, "?   ") {
			fmt.Fprint(s.out, l)
		}
	}
}

// skipReason is what t.Skip said: the output lines after "=== RUN" and before "--- SKIP", joined.
func skipReason(lines []string) string {
	var reason []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		reason = append(reason, t)
	}
	if len(reason) == 0 {
		return "(no reason given)"
	}
	return strings.Join(reason, " / ")
}

func (s *summariser) finish() {
	// Tests still running when the stream ended (go test killed, or a crash the events did not close)
	// count as failed: their output is all there is to show.
	var open []string
	for key, lines := range s.output {
		if strings.HasSuffix(key, "\x00") || len(lines) == 0 {
			continue
		}
		open = append(open, key)
	}
	sort.Strings(open)
	for _, key := range open {
		pkg, test, _ := strings.Cut(key, "\x00")
		s.counts.failed++
		fmt.Fprintf(s.out, "=== FAIL %s %s (did not finish)\n", pkg, test)
		for _, l := range s.output[key] {
			fmt.Fprint(s.out, l)
		}
	}
	if len(s.skips) > 0 {
		fmt.Fprintf(s.out, "\nskipped:\n")
		sort.Strings(s.skips)
		for _, l := range s.skips {
			fmt.Fprintf(s.out, "  %s\n", l)
		}
	}
	c := s.counts
	fmt.Fprintf(s.out, "\n%d tests ran in %d packages (subtests counted)\n", c.passed+c.failed+c.skipped, c.packages)
	fmt.Fprintf(s.out, "%d passed, %d failed, %d skipped\n", c.passed, c.failed, c.skipped)
}
