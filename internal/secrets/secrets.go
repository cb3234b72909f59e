// Package secrets keeps credentials on the gateway. A secrets file names each secret and where its
// value comes from (an environment variable, a file, or the file itself); the agent only ever holds
// placeholders (swarm-proxy-secret:NAME). Apply binds a request to the secrets of the rule that
// decided it: it refuses placeholders of secrets the rule does not list, replaces the others in header
// values and query parameters, and sets the rule's injected headers. Redact removes values from the
// headers of responses. No value ever appears in an error, a log attribute or a String of this package.
package secrets

import (
	"log/slog"
	"slices"
	"sync/atomic"
)

// Secret is one resolved secret. Its value is never printed: String, GoString and LogValue give the
// name only.
type Secret struct {
	Name string
	// PlaceholderEnv is the environment variable that `swarm-proxy env --secrets` sets to the placeholder.
	PlaceholderEnv string
	// From says where the value comes from ("env GITHUB_TOKEN", "file /run/secrets/x", "inline"),
	// for messages.
	From string
	// Err is why the value could not be resolved; requests that need it fail closed. It never holds the value.
	Err error

	value string
}

// String returns the secret's name, never its value.
func (s *Secret) String() string { return "secret " + s.Name }

// GoString returns the secret's name, never its value, so that %#v does not print it either.
func (s *Secret) GoString() string { return s.String() }

// LogValue logs the name and source only.
func (s *Secret) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", s.Name), slog.String("from", s.From))
}

// Set is the validated and resolved content of a secrets file. A nil *Set holds no secret.
type Set struct {
	Source  string // file the set came from
	secrets map[string]*Secret
}

// Lookup returns the secret called name, or nil.
func (s *Set) Lookup(name string) *Secret {
	if s == nil {
		return nil
	}
	return s.secrets[name]
}

// Secrets returns every secret, sorted by name.
func (s *Set) Secrets() []*Secret {
	if s == nil {
		return nil
	}
	out := make([]*Secret, 0, len(s.secrets))
	for _, sec := range s.secrets {
		out = append(out, sec)
	}
	slices.SortFunc(out, func(a, b *Secret) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Unresolved returns the secrets whose value could not be resolved, sorted by name.
func (s *Set) Unresolved() []*Secret {
	var out []*Secret
	for _, sec := range s.Secrets() {
		if sec.Err != nil {
			out = append(out, sec)
		}
	}
	return out
}

// Equal reports whether s and o hold the same secrets with the same values and sources.
func (s *Set) Equal(o *Set) bool {
	a, b := s.Secrets(), o.Secrets()
	return slices.EqualFunc(a, b, func(x, y *Secret) bool {
		return x.Name == y.Name && x.PlaceholderEnv == y.PlaceholderEnv && x.From == y.From &&
			x.value == y.value && errString(x.Err) == errString(y.Err)
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Holder holds the secrets in force and swaps them atomically on reload. A nil *Holder holds none.
type Holder struct{ p atomic.Pointer[Set] }

// NewHolder returns a holder with s in force.
func NewHolder(s *Set) *Holder {
	h := &Holder{}
	h.p.Store(s)
	return h
}

// Load returns the secrets in force (nil when there are none).
func (h *Holder) Load() *Set {
	if h == nil {
		return nil
	}
	return h.p.Load()
}

// Store puts s in force.
func (h *Holder) Store(s *Set) { h.p.Store(s) }
