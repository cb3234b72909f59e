package policy

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestSecretFields(t *testing.T) {
	p := mustParse(t, `mode: enforce
allow:
  - host: api.github.com
    ports: [443]
    inject:
      - header: authorization
        value: "Bearer {{secret:github}}"
    secrets: [github, other]
  - host: example.com
`)
	r := p.Allow[0]
	if !r.UsesSecrets() || p.Allow[1].UsesSecrets() {
		t.Errorf("UsesSecrets: %v, %v", r.UsesSecrets(), p.Allow[1].UsesSecrets())
	}
	if !r.Inspects() || p.Allow[1].Inspects() {
		t.Errorf("a rule with secrets must be inspected: %v, %v", r.Inspects(), p.Allow[1].Inspects())
	}
	if len(r.Inject) != 1 || r.Inject[0].Header != "Authorization" || r.Inject[0].Value.String() != "Bearer {{secret:github}}" {
		t.Errorf("Inject = %+v", r.Inject)
	}
	if !reflect.DeepEqual(r.Secrets, []string{"github", "other"}) {
		t.Errorf("Secrets = %v", r.Secrets)
	}
}

func TestSecretFieldsErrors(t *testing.T) {
	tests := []struct{ name, rules, want string }{
		{"inject names a secret not listed", `allow:
  - host: api.github.com
    inject: [{header: Authorization, value: "Bearer {{secret:github}}"}]
    secrets: [other]`, `policy.yaml:3: allow#1: inject[0] (Authorization) uses secret "github", which this rule's secrets: does not list; add it: secrets: [github]`},
		{"inject without secrets", `allow:
  - host: api.github.com
    inject: [{header: Authorization, value: "Bearer {{secret:github}}"}]`, `uses secret "github", which this rule's secrets: does not list`},
		{"deny rule", `deny:
  - host: evil.example
    secrets: [github]`, "policy.yaml:3: deny#1: inject and secrets go on allow rules"},
		{"cidr rule", `allow:
  - cidr: 10.0.0.0/8
    secrets: [github]`, "need a host rule"},
		{"any host", `allow:
  - host: "*"
    secrets: [github]`, `on host "*" would let an agent send the secrets to any host`},
		{"bad name", `allow:
  - host: a.example
    secrets: [GitHub]`, `secrets: "GitHub": a secret name is`},
		{"listed twice", `allow:
  - host: a.example
    secrets: [a, a]`, `secrets: "a" is listed twice`},
		{"framing header", `allow:
  - host: a.example
    secrets: [a]
    inject: [{header: content-length, value: "{{secret:a}}"}]`, "inject[0]: Content-Length frames the message"},
		{"bad header name", `allow:
  - host: a.example
    secrets: [a]
    inject: [{header: "x y", value: "{{secret:a}}"}]`, `inject[0]: "x y" is not a valid header name`},
		{"header twice", `allow:
  - host: a.example
    secrets: [a]
    inject: [{header: X-Key, value: "{{secret:a}}"}, {header: x-key, value: "{{secret:a}}"}]`, "inject[1]: header X-Key is injected twice"},
		{"bad template", `allow:
  - host: a.example
    secrets: [a]
    inject: [{header: X-Key, value: "{{env:A}}"}]`, "is not {{secret:NAME}}"},
		{"control character", `allow:
  - host: a.example
    secrets: [a]
    inject: [{header: X-Key, value: "a\u0001{{secret:a}}"}]`, "a character a header cannot hold"},
		{"inspect false", `allow:
  - host: a.example
    secrets: [a]
    inspect: false`, "inspect: false contradicts inject and secrets"},
		{"ip host under an allow cidr", `allow:
  - cidr: 10.0.0.0/8
    ports: [443]
  - host: 10.1.2.3
    secrets: [a]`, "policy.yaml:5: allow#2: its inject and secrets would never apply: requests to 10.1.2.3 are decided by allow#1 (cidr 10.0.0.0/8, ports [443], policy.yaml line 3)"},
		{"unknown inject key", `allow:
  - host: a.example
    inject: [{header: X-Key, valeu: "{{secret:a}}"}]`, `unknown key "valeu" (a header injection has: header, value)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("policy.yaml", []byte("mode: enforce\n"+tt.rules+"\n"))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant %q", err, tt.want)
			}
		})
	}
}

// TestSecretsOnAddressRules: a host rule for a public address binds secrets (no cidr rule decides
// it); the address is only decided here, never dialed.
func TestSecretsOnAddressRules(t *testing.T) {
	p := mustParse(t, "mode: enforce\nallow:\n  - host: 140.82.112.6\n    secrets: [a]\n  - cidr: 10.0.0.0/8\n")
	if d := p.Decide(Target{Host: "140.82.112.6", Port: 443}, nil); !d.Allow || !d.Rule.UsesSecrets() {
		t.Errorf("decided %+v, want the rule with the secret", d)
	}
}
