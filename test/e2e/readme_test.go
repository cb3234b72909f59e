package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's shell blocks are run as written, in order, in one bash, by TestReadme: "First steps"
// and the broker walkthrough must work for a person who pastes them from a fresh clone.
//
// A ```sh block is a list of commands that print nothing. A ```console block is commands after "$ "
// (a heredoc or a line ending in "\" carries on to the next lines) each followed by what it prints;
// a ```json block right after a console block is more of what its last command leads to (the proxy's
// access log line). Output a command runs in the background (`... &`) shows up in the same
// terminal, so an expected line is found either in the command's own output, in order, or in what a
// background command printed since it started. Varying parts (times, request ids, tokens, ephemeral
// ports, durations) are compared by their shape.

// readmeSkipped are the README sections whose shell blocks the test does not run, and why.
var readmeSkipped = map[string]string{
	"The two commands": "runs a proxy in the foreground and the whole suite",
	"Benchmarks":       "takes minutes; TestShortRun in bench/ runs the short mode",
}

// readmeInstallLine is the README's install line. The test runs the binary it built instead: the
// line would put $(go env GOPATH)/bin first on the PATH, where an older swarm-proxy may be.
const readmeInstallLine = `go install ./cmd/swarm-proxy && export PATH="$(go env GOPATH)/bin:$PATH"`

// docCommand is one command of a document with what it is shown to print.
type docCommand struct {
	Section string
	Line    int    // line of the document where the command starts
	Text    string // the command, several lines for heredocs and continuations
	Console bool   // from a console block: Expected is what it prints; from an sh block it prints nothing
	Expect  []string
}

// parseDocCommands returns the commands of every sh and console block of a Markdown document.
func parseDocCommands(doc string) ([]docCommand, error) {
	lines := strings.Split(doc, "\n")
	var cmds []docCommand
	section := ""
	lastConsole := -1 // index in cmds of the last command of the previous block, if it was console
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.HasPrefix(line, "## ") {
			section = strings.TrimPrefix(line, "## ")
			continue
		}
		if !strings.HasPrefix(line, "```") {
			continue
		}
		lang := strings.TrimPrefix(line, "```")
		var body []string
		start := i + 1
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			body = append(body, lines[i])
		}
		if i == len(lines) {
			return nil, fmt.Errorf("line %d: block not closed", start)
		}
		switch lang {
		case "sh":
			for j := 0; j < len(body); j++ {
				t := strings.TrimSpace(body[j])
				if t == "" || strings.HasPrefix(t, "#") {
					continue
				}
				c := docCommand{Section: section, Line: start + j + 1}
				j = commandEnd(body, j, &c.Text)
				cmds = append(cmds, c)
			}
			lastConsole = -1
		case "console":
			lastConsole = -1
			for j := 0; j < len(body); j++ {
				if !strings.HasPrefix(body[j], "$ ") {
					if lastConsole < 0 {
						return nil, fmt.Errorf("line %d: output before the first command of a console block", start+j+1)
					}
					c := &cmds[len(cmds)-1]
					c.Expect = append(c.Expect, body[j])
					continue
				}
				body[j] = strings.TrimPrefix(body[j], "$ ")
				c := docCommand{Section: section, Line: start + j + 1, Console: true}
				j = commandEnd(body, j, &c.Text)
				cmds = append(cmds, c)
				lastConsole = len(cmds) - 1
			}
		case "json":
			if lastConsole >= 0 {
				cmds[lastConsole].Expect = append(cmds[lastConsole].Expect, body...)
			}
		default:
			lastConsole = -1
		}
	}
	return cmds, nil
}

var heredocRE = regexp.MustCompile(`<<-?\s*'?"?(\w+)'?"?`)

// commandEnd collects the command starting at body[j] into text, across "\" continuations and
// heredocs, and returns the index of its last line.
func commandEnd(body []string, j int, text *string) int {
	var b strings.Builder
	for ; j < len(body); j++ {
		b.WriteString(body[j] + "\n")
		if m := heredocRE.FindStringSubmatch(body[j]); m != nil {
			for j++; j < len(body); j++ {
				b.WriteString(body[j] + "\n")
				if strings.TrimSpace(body[j]) == m[1] {
					break
				}
			}
			break
		}
		if !strings.HasSuffix(body[j], "\\") {
			break
		}
	}
	*text = b.String()
	return j
}

func TestParseDocCommands(t *testing.T) {
	doc := "# t\n## A\n```sh\nmkdir x   # comment\n# only a comment\nfoo \\\n  --bar\n```\n" +
		"```console\n$ cat > f <<'EOF'\nmode: x\nEOF\n$ run &\nline 1\n\nline 2\n```\n```json\n{\"a\":1}\n```\n" +
		"## B\n```yaml\nnot: run\n```\n```json\n{\"b\":2}\n```\n"
	got, err := parseDocCommands(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := []docCommand{
		{Section: "A", Line: 4, Text: "mkdir x   # comment\n"},
		{Section: "A", Line: 6, Text: "foo \\\n  --bar\n"},
		{Section: "A", Line: 10, Text: "cat > f <<'EOF'\nmode: x\nEOF\n", Console: true},
		{Section: "A", Line: 13, Text: "run &\n", Console: true, Expect: []string{"line 1", "", "line 2", `{"a":1}`}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if _, err := parseDocCommands("```console\nout\n```\n"); err == nil {
		t.Error("output before any command was accepted")
	}
}

// volatile are the parts of a line that differ from run to run, replaced by their shape.
var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT`), "HTTPDATE"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`), "TIME"},
	{regexp.MustCompile(`v1\.\d+\.[\w-]+\.[\w-]+`), "TOKEN"},
	{regexp.MustCompile(`\b[0-9a-f]{16}\b`), "ID"},
	{regexp.MustCompile(`:(3[2-9]\d{3}|[4-6]\d{4})\b`), ":PORT"},
	{regexp.MustCompile(`/[0-9a-f]{6}\b`), "/CONN"},
	{regexp.MustCompile(`(duration(_ms)?"?[=:])[\d.]+(µs|ms|s)?`), "${1}N"},
}

func normalise(line string) string {
	line = strings.TrimRight(line, " \r")
	for _, v := range volatile {
		line = v.re.ReplaceAllString(line, v.with)
	}
	return line
}

// lineMatches says whether printed matches the expected line: JSON objects compare as objects,
// other lines as text once their varying parts are normalised.
func lineMatches(expected, printed string) bool {
	var e, p map[string]any
	if json.Unmarshal([]byte(expected), &e) == nil && json.Unmarshal([]byte(printed), &p) == nil {
		for _, m := range []map[string]any{e, p} {
			for _, k := range []string{"timestamp", "request_id", "duration_ms", "provider", "expires_at", "token"} {
				if _, ok := m[k]; ok {
					m[k] = "*"
				}
			}
		}
		return reflect.DeepEqual(e, p)
	}
	return normalise(expected) == normalise(printed)
}

// readmeShell is one bash in a network namespace of its own (so the README's fixed ports cannot
// clash with anything on the machine, and nothing it does leaves loopback), fed one command at a
// time.
type readmeShell struct {
	t     *testing.T
	dir   string // command outputs
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan string // "N RC" when command N finished
	outs  []string    // output file of each command so far
	bg    []bool      // whether command i left something running in the background
	marks []int       // per command: how many of its output lines were there when the current command started
	used  map[[2]int]bool
}

func startReadmeShell(t *testing.T) *readmeShell {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the README test runs in a network namespace: Linux only")
	}
	needTools(t, "bash", "unshare", "ip", "curl", "python3", "openssl")
	work, tmp, dir, home := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	// In a terminal curl shows no progress meter for a body it prints; here its output is a file.
	if err := os.WriteFile(filepath.Join(home, ".curlrc"), []byte("no-progress-meter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--net"}
	if os.Geteuid() != 0 {
		args = append([]string{"--user", "--map-root-user"}, args...)
	}
	args = append(args, "--", "bash", "-c", "ip link set lo up && exec bash")
	s := &readmeShell{t: t, dir: dir, done: make(chan string, 1), used: map[[2]int]bool{}}
	s.cmd = exec.Command("unshare", args...)
	s.cmd.Dir = work
	s.cmd.Env = cleanEnv("CURL_HOME="+home, "TMPDIR="+tmp, "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"))
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := s.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.ExtraFiles = []*os.File{ctlW} // fd 3: "N RC" after each command
	var shellErr bytes.Buffer           // written by exec's copying goroutine until Wait returns
	s.cmd.Stdout, s.cmd.Stderr = &shellErr, &shellErr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start bash in a network namespace: %v", err)
	}
	ctlW.Close()
	go func() {
		sc := bufio.NewScanner(ctlR)
		for sc.Scan() {
			s.done <- sc.Text()
		}
		close(s.done)
	}()
	s.stdin = in
	t.Cleanup(func() {
		// The shell and everything the README started in the background share its process group.
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		waited := make(chan struct{})
		go func() { s.cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-waited
		}
		ctlR.Close()
		for i, f := range s.outs {
			if b, _ := os.ReadFile(f); strings.Contains(string(b), "WARNING: DATA RACE") {
				t.Errorf("command %d hit a data race:\n%s", i, b)
			}
		}
		if t.Failed() && shellErr.Len() > 0 {
			t.Logf("bash itself printed:\n%s", shellErr.String())
		}
	})
	// A machine without user namespaces cannot run unshare unprivileged: bash never reads this (the
	// write may fail with a broken pipe) and the control pipe closes.
	io.WriteString(s.stdin, "echo ready >&3\n")
	select {
	case _, ok := <-s.done:
		if !ok {
			s.cmd.Wait()
			why := "cannot make a network namespace: " + strings.TrimSpace(shellErr.String())
			if os.Getenv("CI") != "" {
				t.Fatal(why)
			}
			t.Skip(why)
		}
	case <-time.After(waitTimeout):
		t.Fatal("bash in a network namespace did not start")
	}
	return s
}

func (s *readmeShell) write(text string) {
	if _, err := io.WriteString(s.stdin, text); err != nil {
		s.t.Fatalf("write to bash: %v", err)
	}
}

// run runs one command and checks its exit status and what it printed against the document.
func (s *readmeShell) run(c docCommand) {
	t := s.t
	n := len(s.outs)
	out := filepath.Join(s.dir, fmt.Sprintf("out.%d", n))
	s.marks = s.marks[:0]
	for _, f := range s.outs {
		s.marks = append(s.marks, len(readLines(f)))
	}
	s.outs = append(s.outs, out)
	background := strings.HasSuffix(strings.TrimSpace(stripComment(c.Text)), "&")
	s.bg = append(s.bg, background)
	// The command runs in this shell (cd, export and jobs stay), with its output in its own file and
	// no access to the control pipe.
	// Then, like an interactive shell before its next prompt, it forgets the background jobs that
	// ended (`jobs` does that), so that `kill %swarm-proxy` names the one still running.
	s.write(fmt.Sprintf("{\n%s} > %q 2>&1 < /dev/null 3>&-\necho \"%d $?\" >&3\njobs > /dev/null\n", c.Text, out, n))
	where := fmt.Sprintf("README.md:%d (%s): %s", c.Line, c.Section, strings.TrimSpace(c.Text))
	select {
	case got, ok := <-s.done:
		if !ok {
			t.Fatalf("%s: bash exited", where)
		}
		// A command shown with its output is judged by that output (curl exits 56 on a refused
		// CONNECT, and the README shows what it printed); any other must succeed.
		if got != fmt.Sprintf("%d 0", n) && len(c.Expect) == 0 {
			t.Fatalf("%s: exit status %s, want 0; it printed:\n%s", where, strings.TrimPrefix(got, strconv.Itoa(n)+" "), s.terminal(n))
		}
	case <-time.After(2 * waitTimeout):
		t.Fatalf("%s: still running after %s; it printed:\n%s", where, 2*waitTimeout, s.terminal(n))
	}
	var problem string
	deadline := time.Now().Add(waitTimeout)
	for {
		if problem = s.match(n, c, background); problem == "" {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // waiting for a background command's output
	}
	t.Fatalf("%s: %s\nthe document shows:\n%s\nthe terminal shows:\n%s", where, problem, strings.Join(c.Expect, "\n"), s.terminal(n))
}

// match checks command n's expected lines against its own output (in order, all of it unless the
// command runs in the background) and the new output of earlier background commands. It returns
// what is missing, or "".
func (s *readmeShell) match(n int, c docCommand, background bool) string {
	own := nonEmpty(readLines(s.outs[n]))
	used := map[[2]int]bool{}
	i := 0
	for _, e := range c.Expect {
		if strings.TrimSpace(e) == "" {
			continue
		}
		if i < len(own) && lineMatches(e, own[i]) {
			i++
			continue
		}
		if !s.findBackground(n, e, used) {
			return fmt.Sprintf("the line %q was not printed", e)
		}
	}
	if !background && i < len(own) {
		if !c.Console {
			return "it printed something; the document shows it printing nothing"
		}
		return fmt.Sprintf("it printed %q, which the document does not show", own[i])
	}
	for k := range used {
		s.used[k] = true
	}
	return ""
}

// findBackground looks for a line matching e among what earlier background commands printed since
// command n started, not yet matched by an earlier expected line.
func (s *readmeShell) findBackground(n int, e string, used map[[2]int]bool) bool {
	for m := 0; m < n; m++ {
		if !s.bg[m] {
			continue
		}
		for k, l := range readLines(s.outs[m]) {
			key := [2]int{m, k}
			if k < s.marks[m] || used[key] || s.used[key] {
				continue
			}
			if lineMatches(e, l) {
				used[key] = true
				return true
			}
		}
	}
	return false
}

// terminal is what a person would have seen: the output of command n and what the background
// commands printed while it ran.
func (s *readmeShell) terminal(n int) string {
	var b strings.Builder
	b.WriteString(strings.Join(readLines(s.outs[n]), "\n"))
	for m := 0; m < n; m++ {
		if lines := readLines(s.outs[m]); s.bg[m] && len(lines) > s.marks[m] {
			fmt.Fprintf(&b, "\n[from the background command %d]\n%s", m, strings.Join(lines[s.marks[m]:], "\n"))
		}
	}
	return b.String()
}

func readLines(name string) []string {
	b, err := os.ReadFile(name)
	if err != nil || len(b) == 0 {
		return nil
	}
	s := strings.TrimSuffix(string(b), "\n")
	if !strings.HasSuffix(string(b), "\n") {
		// A line still being written is not there yet.
		if i := strings.LastIndexByte(s, '\n'); i >= 0 {
			s = s[:i]
		} else {
			return nil
		}
	}
	return strings.Split(s, "\n")
}

func nonEmpty(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// stripComment drops a trailing "# comment" from the last line of a command.
func stripComment(text string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	last := lines[len(lines)-1]
	if i := strings.Index(last, " #"); i >= 0 {
		last = last[:i]
	}
	return last
}

// TestReadme runs the README's First steps and broker walkthrough as a person would: every shell
// command in order, in one shell, with the binary on the PATH, checking each exit status and
// printed line against the README.
func TestReadme(t *testing.T) {
	doc, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := parseDocCommands(string(doc))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	s := startReadmeShell(t)
	ran := map[string]int{}
	installed := false
	for _, c := range cmds {
		if _, skip := readmeSkipped[c.Section]; skip {
			continue
		}
		if strings.TrimSpace(c.Text) == readmeInstallLine {
			installed = true
			c.Text = ": the test put its own build on the PATH\n"
		}
		s.run(c)
		ran[c.Section]++
	}
	if !installed {
		t.Errorf("the README has no line %q before its first swarm-proxy command", readmeInstallLine)
	}
	for _, section := range []string{"First steps", "Egress through another machine: broker and provider"} {
		if ran[section] < 3 {
			t.Errorf("ran %d commands of the README section %q; is it still there?", ran[section], section)
		}
	}
	t.Logf("ran %v", ran)
}
