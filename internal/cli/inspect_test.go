package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyExplainRequest(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(`mode: enforce
allow:
  - host: api.github.com
    name: github
    ports: [443]
    http:
      - methods: [GET, HEAD]
        paths: ["/repos/myorg/**"]
  - host: pypi.org
    access: read-only
  - host: example.org
`), 0o644); err != nil {
		t.Fatal(err)
	}
	squeeze := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"api.github.com"}, []string{"decision allow", "inspect yes: HTTPS is terminated and each request must match one of:",
			`{methods: [GET, HEAD], paths: ["/repos/myorg/**"]}`}},
		{[]string{"api.github.com", "GET", "/repos/myorg/tool?ref=main"}, []string{"request GET /repos/myorg/tool decision",
			"decision allow (the rule inspects: this request is allowed by its http entries)"}},
		{[]string{"api.github.com", "DELETE", "/repos/myorg/tool"}, []string{"decision deny (http_rule_not_matched)",
			"reason DELETE /repos/myorg/tool is not allowed by rule github", `fix to allow it, add to the http list of rule github in ` + pol + `: - {methods: [DELETE], paths: ["/repos/myorg/tool"]}`}},
		{[]string{"api.github.com", "GET", "/repos/myorg/%2e%2e/other"}, []string{"decision deny (ambiguous_path)", "it has an encoded . (%2E)"}},
		{[]string{"pypi.org", "POST", "/legacy/"}, []string{"decision deny (http_rule_not_matched)", "{methods: [GET, HEAD, OPTIONS], paths: [\"/**\"]}"}},
		{[]string{"example.org", "DELETE", "/a/../b"}, []string{"decision allow (the rule does not inspect: every request to the host is allowed)"}},
		{[]string{"other.example", "GET", "/"}, []string{"decision deny", "none (no_rule_matched)"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			r := runCLI(t, "", append([]string{"policy", "explain", pol}, c.args...)...)
			if r.err != nil {
				t.Fatal(r.err)
			}
			for _, w := range c.want {
				if !strings.Contains(squeeze(r.stdout)+" ", squeeze(w)) {
					t.Errorf("output lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
	if r := runCLI(t, "", "policy", "explain", pol, "api.github.com", "GET"); r.err == nil || !strings.Contains(r.err.Error(), "METHOD needs a PATH") {
		t.Errorf("explain with METHOD alone: %v", r.err)
	}
}
