package secrets

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"gopkg.in/yaml.v3"
)

// File is the on-disk format of a secrets file: a YAML mapping from secret name to Spec, with an
// optional top-level "version: 1". Parse builds it; Resolve turns it into a Set.
//
//	github:
//	  value_from: {env: GITHUB_TOKEN}          # or {file: /run/secrets/github}, or value: "..."
//	  placeholder_env: GITHUB_TOKEN
type File struct {
	Version int
	Specs   []Spec // in the order of the file
}

// Spec is one secret of the file: exactly one of Value, Env and Path says where its value is.
type Spec struct {
	Name           string
	Line           int
	Value          *string // value: "..." in the file itself
	Env            string  // value_from: {env: NAME}
	Path           string  // value_from: {file: PATH}
	PlaceholderEnv string  // placeholder_env: NAME
}

// CurrentVersion is the newest file format version this build reads. A file without "version" is
// read as this version.
const CurrentVersion = 1

// ErrInvalid is wrapped by every error about the content of a secrets file.
var ErrInvalid = errors.New("invalid secrets file")

// ErrPermissions is wrapped by the error of a secrets file that group or others may access.
var ErrPermissions = errors.New("group or others may access the secrets file")

// MaxNameLen bounds a secret's name.
const MaxNameLen = 64

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	envRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ValidName reports why name cannot be a secret's name, or nil: 1 to MaxNameLen lower-case letters,
// digits, '_' and '-', starting with a letter or digit. The error does not quote name, which may be a
// value written in the wrong place.
func ValidName(name string) error {
	if len(name) > MaxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("a secret name is 1 to %d of a-z, 0-9, '_' and '-', starting with a letter or digit", MaxNameLen)
	}
	return nil
}

// Load reads a secrets file, refusing one that group or others may read or write, and resolves its
// values. The error of a broken file names every problem with its line and never contains a value.
func Load(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load secrets: %w", err)
	}
	return LoadData(path, data)
}

// LoadData is Load for a file's content read by the caller (a reload reads it once it has stopped
// changing): it checks path's permissions, parses data and resolves its values.
func LoadData(path string, data []byte) (*Set, error) {
	if err := checkPermissions(path); err != nil {
		return nil, err
	}
	f, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	return Resolve(path, f, os.LookupEnv, os.ReadFile)
}

// ReadFile reads and parses a secrets file without resolving its values, refusing one that group or
// others may read or write.
func ReadFile(path string) (*File, error) {
	if err := checkPermissions(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load secrets: %w", err)
	}
	return Parse(path, data)
}

func checkPermissions(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("load secrets: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("load secrets: %s is not a regular file", path)
	}
	// Windows has no mode bits; its ACLs are the operator's to set.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return fmt.Errorf("load secrets: %s: mode %04o: %w; run: chmod 600 %s", path, perm, ErrPermissions, path)
	}
	return nil
}

// Parse parses a secrets file. name is used in messages. Every problem is reported at once, each as
// "name:line: problem"; no message quotes a value.
func Parse(name string, data []byte) (*File, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w:\n%s", ErrInvalid, yamlMessage(name, err))
	}
	f := &File{Version: CurrentVersion}
	var problems []string
	problem := func(line int, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s:%d: %s", name, line, fmt.Sprintf(format, args...)))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return f, nil // an empty file holds no secret
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		if top.Tag == "!!null" {
			return f, nil
		}
		return nil, fmt.Errorf("%w:\n%s:%d: want a mapping from secret name to {value_from, placeholder_env}", ErrInvalid, name, top.Line)
	}
	seen := map[string]int{}
	envs := map[string]string{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		if k.Value == "version" && v.Kind == yaml.ScalarNode {
			n, err := strconv.Atoi(v.Value)
			switch {
			case err != nil || n < 1:
				problem(v.Line, "version must be a positive number")
			case n > CurrentVersion:
				problem(v.Line, "version %d is not supported (this build reads version %d)", n, CurrentVersion)
			default:
				f.Version = n
			}
			continue
		}
		if err := ValidName(k.Value); err != nil {
			problem(k.Line, "%v (the name is not quoted here in case it is a value)", err)
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			problem(k.Line, "secret %q is already defined on line %d", k.Value, prev)
			continue
		}
		seen[k.Value] = k.Line
		s, errs := parseSpec(k.Value, k.Line, v)
		for _, e := range errs {
			problem(e.line, "secret %q: %s", k.Value, e.msg)
		}
		if len(errs) > 0 {
			continue
		}
		if s.PlaceholderEnv != "" {
			if other, dup := envs[s.PlaceholderEnv]; dup {
				problem(k.Line, "secret %q: placeholder_env %s is already the placeholder of secret %q", k.Value, s.PlaceholderEnv, other)
				continue
			}
			envs[s.PlaceholderEnv] = k.Value
		}
		f.Specs = append(f.Specs, s)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w:\n%s", ErrInvalid, strings.Join(problems, "\n"))
	}
	return f, nil
}

type lineMsg struct {
	line int
	msg  string
}

const specKeys = "value, value_from, placeholder_env"

// parseSpec reads one secret's mapping. Its messages name keys, never the scalars they hold.
func parseSpec(name string, line int, n *yaml.Node) (Spec, []lineMsg) {
	s := Spec{Name: name, Line: line}
	var errs []lineMsg
	bad := func(l int, format string, args ...any) { errs = append(errs, lineMsg{l, fmt.Sprintf(format, args...)}) }
	if n.Kind != yaml.MappingNode {
		bad(n.Line, "want a mapping with %s (the value itself goes under value:)", specKeys)
		return s, errs
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "value":
			if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
				bad(v.Line, "value must be a string")
				continue
			}
			val := v.Value
			s.Value = &val
		case "value_from":
			src, srcErrs := parseSource(v)
			errs = append(errs, srcErrs...)
			s.Env, s.Path = src.Env, src.Path
		case "placeholder_env":
			if v.Kind != yaml.ScalarNode || !envRE.MatchString(v.Value) {
				bad(v.Line, "placeholder_env must be an environment variable name like GITHUB_TOKEN")
				continue
			}
			s.PlaceholderEnv = v.Value
		default:
			bad(k.Line, "unknown key (a secret has: %s; the key is not quoted here in case it is a value)", specKeys)
		}
	}
	sources := 0
	for _, set := range []bool{s.Value != nil, s.Env != "", s.Path != ""} {
		if set {
			sources++
		}
	}
	if sources != 1 && len(errs) == 0 {
		bad(line, "give exactly one of value: \"...\", value_from: {env: NAME} and value_from: {file: PATH}")
	}
	return s, errs
}

func parseSource(n *yaml.Node) (Spec, []lineMsg) {
	var s Spec
	if n.Kind != yaml.MappingNode {
		return s, []lineMsg{{n.Line, "value_from must be {env: NAME} or {file: PATH}"}}
	}
	var errs []lineMsg
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind != yaml.ScalarNode || v.Value == "" {
			errs = append(errs, lineMsg{v.Line, "value_from: env and file must be non-empty strings"})
			continue
		}
		switch k.Value {
		case "env":
			if !envRE.MatchString(v.Value) {
				errs = append(errs, lineMsg{v.Line, "value_from: env must be an environment variable name like GITHUB_TOKEN"})
				continue
			}
			s.Env = v.Value
		case "file":
			s.Path = v.Value
		default:
			errs = append(errs, lineMsg{k.Line, "value_from: unknown key (want env or file)"})
		}
	}
	if len(errs) == 0 && s.Env != "" && s.Path != "" {
		errs = append(errs, lineMsg{n.Line, "value_from takes env or file, not both"})
	}
	return s, errs
}

// Resolve reads the value of each secret of f with lookupEnv and readFile (os.LookupEnv and
// os.ReadFile outside tests). A value that cannot be read (an unset variable, a missing file, an empty
// value) leaves its secret unresolved with the reason in Err: requests that need it fail closed. A
// value with CR, LF, NUL or another control character but tab cannot go in a header and fails the
// whole load. One trailing line break of
// a file is not part of the value.
func Resolve(source string, f *File, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (*Set, error) {
	set := &Set{Source: source, secrets: make(map[string]*Secret, len(f.Specs))}
	var problems []string
	for _, spec := range f.Specs {
		sec := &Secret{Name: spec.Name, PlaceholderEnv: spec.PlaceholderEnv}
		var val string
		switch {
		case spec.Value != nil:
			sec.From, val = "inline value", *spec.Value
		case spec.Env != "":
			sec.From = "env " + spec.Env
			v, ok := lookupEnv(spec.Env)
			if !ok {
				sec.Err = fmt.Errorf("environment variable %s is not set", spec.Env)
			}
			val = v
		default:
			sec.From = "file " + spec.Path
			data, err := readFile(spec.Path)
			if err != nil {
				sec.Err = fmt.Errorf("read %s: %w", spec.Path, unwrapPath(err))
			}
			val = strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		}
		switch {
		case sec.Err != nil:
		case val == "":
			sec.Err = fmt.Errorf("the value from %s is empty", sec.From)
		case !httpguts.ValidHeaderFieldValue(val):
			problems = append(problems, fmt.Sprintf("%s:%d: secret %q: the value from %s contains CR, LF, NUL or another control character, which cannot go in a header", source, spec.Line, spec.Name, sec.From))
			continue
		default:
			sec.value = val
		}
		set.secrets[spec.Name] = sec
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w:\n%s", ErrInvalid, strings.Join(problems, "\n"))
	}
	return set, nil
}

// unwrapPath drops the *fs.PathError's own path and operation, which the caller already names.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// yamlMessage turns yaml.v3's "yaml: line 3: problem" into "name:3: problem". yaml's syntax errors
// describe the structure, not the scalars, so no value reaches the message.
func yamlMessage(name string, err error) string {
	msgs := []string{err.Error()}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = slices.Clone(te.Errors)
	}
	for i, m := range msgs {
		if loc := yamlLineRE.FindStringSubmatch(m); loc != nil {
			msgs[i] = fmt.Sprintf("%s:%s: %s", name, loc[1], m[len(loc[0]):])
		} else {
			msgs[i] = fmt.Sprintf("%s: %s", name, strings.TrimPrefix(m, "yaml: "))
		}
	}
	return strings.Join(msgs, "\n")
}

// truncate shortens s for a message.
func truncate(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
