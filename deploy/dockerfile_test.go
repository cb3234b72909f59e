package deploy_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode"
)

// A small reader of Dockerfiles for these tests: the instructions, stages and word rules of the
// Dockerfile reference (https://docs.docker.com/reference/dockerfile/) that the tests look at, and
// a lint of the mistakes docker build --check reports while parsing. It builds nothing.

// stage is one FROM and what follows it.
type stage struct {
	base, name string
	instrs     []instr
}

// instr is one instruction: its keyword in capitals, its --flags, and its arguments either in exec
// form (a JSON array) or as the raw text after the flags, continuation lines joined.
type instr struct {
	cmd   string
	line  int
	flags map[string]string
	exec  []string // nil in shell form
	raw   string
}

// words splits the raw arguments on unquoted blanks, keeping each word as written.
func (in instr) words() []string {
	var out []string
	var cur strings.Builder
	quote := rune(0)
	escaped := false
	for _, r := range in.raw {
		switch {
		case escaped:
			escaped = false
		case r == '\\' && quote != '\'':
			escaped = true
		case quote != 0 && r == quote:
			quote = 0
		case quote == 0 && (r == '"' || r == '\''):
			quote = r
		case quote == 0 && unicode.IsSpace(r):
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
			continue
		}
		cur.WriteRune(r)
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

var knownInstructions = map[string]bool{"FROM": true, "RUN": true, "CMD": true, "LABEL": true, "MAINTAINER": true,
	"EXPOSE": true, "ENV": true, "ADD": true, "COPY": true, "ENTRYPOINT": true, "VOLUME": true, "USER": true,
	"WORKDIR": true, "ARG": true, "ONBUILD": true, "STOPSIGNAL": true, "HEALTHCHECK": true, "SHELL": true}

// parseDockerfile reads src into stages and returns every lint warning, as "Rule (line N): what".
func parseDockerfile(t *testing.T, src string) ([]stage, []string) {
	t.Helper()
	var stages []stage
	var warnings []string
	warn := func(rule string, line int, format string, a ...any) {
		warnings = append(warnings, fmt.Sprintf("%s (line %d): %s", rule, line, fmt.Sprintf(format, a...)))
	}
	lines := strings.Split(src, "\n")
	upper, lower := 0, 0
	names := map[string]bool{}
	for i := 0; i < len(lines); i++ {
		start := i + 1
		text := strings.TrimSpace(lines[i])
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		// Continuation lines: a trailing backslash joins the next line; comment lines inside are
		// dropped, empty ones are allowed but flagged.
		for strings.HasSuffix(text, `\`) && i+1 < len(lines) {
			text = strings.TrimSuffix(text, `\`)
			for i+1 < len(lines) {
				i++
				next := strings.TrimSpace(lines[i])
				if next == "" {
					warn("NoEmptyContinuation", i+1, "empty continuation line")
					continue
				}
				if !strings.HasPrefix(next, "#") {
					text += next
					break
				}
			}
		}
		keyword, rest, _ := strings.Cut(text, " ")
		cmd := strings.ToUpper(keyword)
		if !knownInstructions[cmd] {
			t.Fatalf("Dockerfile line %d: unknown instruction %q", start, keyword)
		}
		if keyword == cmd {
			upper++
		} else if keyword == strings.ToLower(keyword) {
			lower++
		}
		in := instr{cmd: cmd, line: start, flags: map[string]string{}}
		rest = strings.TrimSpace(rest)
		for strings.HasPrefix(rest, "--") {
			var flag string
			flag, rest, _ = strings.Cut(rest, " ")
			k, v, _ := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
			in.flags[k] = v
			rest = strings.TrimSpace(rest)
		}
		in.raw = rest
		if strings.HasPrefix(rest, "[") {
			if err := json.Unmarshal([]byte(rest), &in.exec); err != nil {
				in.exec = nil // not a JSON array: shell form, as Docker reads it
			}
		}
		switch cmd {
		case "FROM":
			w := in.words()
			st := stage{}
			if len(w) > 0 {
				st.base = w[0]
			}
			if len(w) == 3 {
				if as := w[1]; strings.EqualFold(as, "as") {
					st.name = w[2]
					if (as == "AS") != (keyword == "FROM") {
						warn("FromAsCasing", start, "'%s' and '%s' keywords' casing do not match", as, keyword)
					}
				}
			}
			if st.name != "" {
				if st.name != strings.ToLower(st.name) {
					warn("StageNameCasing", start, "stage name %q should be lowercase", st.name)
				}
				if names[strings.ToLower(st.name)] {
					warn("DuplicateStageName", start, "duplicate stage name %q", st.name)
				}
				names[strings.ToLower(st.name)] = true
			}
			stages = append(stages, st)
			continue
		case "CMD", "ENTRYPOINT":
			if in.exec == nil {
				warn("JSONArgsRecommended", start, "JSON arguments recommended for %s to prevent unintended behavior related to OS signals", cmd)
			}
		case "MAINTAINER":
			warn("MaintainerDeprecated", start, "the MAINTAINER instruction is deprecated, use a label instead")
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile line %d: %s before the first FROM", start, keyword)
		}
		last := &stages[len(stages)-1]
		last.instrs = append(last.instrs, in)
	}
	if upper > 0 && lower > 0 {
		warn("ConsistentInstructionCasing", 1, "instructions are in both upper and lower case")
	}
	return stages, warnings
}

// healthTest is a HEALTHCHECK's test as Docker stores it: ["CMD", args...] for the exec form,
// ["CMD-SHELL", command] for the shell form, ["NONE"].
func (in instr) healthTest() []string {
	w := in.raw
	kind, rest, _ := strings.Cut(w, " ")
	switch strings.ToUpper(kind) {
	case "NONE":
		return []string{"NONE"}
	case "CMD":
		rest = strings.TrimSpace(rest)
		var exec []string
		if json.Unmarshal([]byte(rest), &exec) == nil {
			return append([]string{"CMD"}, exec...)
		}
		return []string{"CMD-SHELL", rest}
	}
	return nil
}

// dockerWord is the value of one word of an ENV instruction as Docker reads it, with env for its
// variables: quotes removed, backslash escapes applied ($, ", \ and ` in double quotes; any
// character outside quotes), $NAME and ${NAME} expanded.
func dockerWord(word string, env map[string]string) (string, error) {
	var b strings.Builder
	rs := []rune(word)
	expand := func(i int) (int, error) {
		// rs[i] == '$'
		j := i + 1
		if j < len(rs) && rs[j] == '{' {
			end := strings.IndexRune(string(rs[j:]), '}')
			if end < 0 {
				return 0, fmt.Errorf("missing } in %q", word)
			}
			name := string(rs[j+1 : j+end])
			b.WriteString(env[name])
			return j + end, nil
		}
		for j < len(rs) && (rs[j] == '_' || unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j])) {
			j++
		}
		if j == i+1 {
			b.WriteRune('$')
			return i, nil
		}
		b.WriteString(env[string(rs[i+1:j])])
		return j - 1, nil
	}
	for i := 0; i < len(rs); i++ {
		switch r := rs[i]; r {
		case '\\':
			if i+1 < len(rs) {
				i++
				b.WriteRune(rs[i])
			}
		case '\'':
			end := strings.IndexRune(string(rs[i+1:]), '\'')
			if end < 0 {
				return "", fmt.Errorf("unclosed single quote in %q", word)
			}
			b.WriteString(string(rs[i+1 : i+1+end]))
			i += end + 1
		case '"':
			i++
			for ; i < len(rs) && rs[i] != '"'; i++ {
				switch {
				case rs[i] == '\\' && i+1 < len(rs) && strings.ContainsRune("$\"\\`", rs[i+1]):
					i++
					b.WriteRune(rs[i])
				case rs[i] == '$':
					var err error
					if i, err = expand(i); err != nil {
						return "", err
					}
				default:
					b.WriteRune(rs[i])
				}
			}
			if i >= len(rs) {
				return "", fmt.Errorf("unclosed double quote in %q", word)
			}
		case '$':
			var err error
			if i, err = expand(i); err != nil {
				return "", err
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String(), nil
}

// TestDockerfileReader: the reader's stages, forms, flags, lint and word rules on a Dockerfile
// that uses each, so that the checks above rest on something tested.
func TestDockerfileReader(t *testing.T) {
	stages, warnings := parseDockerfile(t, "FROM golang:1.26 AS build\n# a comment\nRUN a \\\n  && b\n"+
		"FROM scratch\nCOPY --from=build --chown=1:1 /x /y\nCMD [\"/bin/x\", \"a b\"]\nENTRYPOINT /bin/x run\n"+
		"HEALTHCHECK --interval=5s CMD [\"/bin/x\", \"health\"]\nENV A=\"q \\\"x\\\" \\$HOME $HOME\" B='lit $X'\n")
	if len(stages) != 2 || stages[0].name != "build" || stages[1].base != "scratch" {
		t.Fatalf("stages %+v", stages)
	}
	if run := stages[0].instrs[0]; run.raw != "a && b" {
		t.Errorf("continuation: %q", run.raw)
	}
	in := stages[1].instrs
	if in[0].flags["from"] != "build" || in[0].flags["chown"] != "1:1" || strings.Join(in[0].words(), ",") != "/x,/y" {
		t.Errorf("COPY %+v", in[0])
	}
	if strings.Join(in[1].exec, "|") != "/bin/x|a b" || in[2].exec != nil {
		t.Errorf("exec forms %q %q", in[1].exec, in[2].exec)
	}
	if h := in[3].healthTest(); strings.Join(h, " ") != "CMD /bin/x health" || in[3].flags["interval"] != "5s" {
		t.Errorf("HEALTHCHECK %q", h)
	}
	got := map[string]string{}
	for _, w := range in[4].words() {
		k, v, _ := strings.Cut(w, "=")
		val, err := dockerWord(v, map[string]string{"HOME": "/root"})
		if err != nil {
			t.Fatal(err)
		}
		got[k] = val
	}
	if got["A"] != `q "x" $HOME /root` || got["B"] != "lit $X" {
		t.Errorf("ENV words %q", got)
	}
	if len(warnings) != 1 || !strings.HasPrefix(warnings[0], "JSONArgsRecommended (line 8)") {
		t.Errorf("warnings %q, want the shell-form ENTRYPOINT", warnings)
	}
}
