package logstats

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// golden compares got with testdata/name, or rewrites the file with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it after review)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

// fixtureSources are the hand-written logs: a rotated, gzip-compressed file and the current one.
func fixtureSources() []Source {
	return []Source{
		FileSource("testdata/access-2026-11-24T10-00-00.000.log.gz"),
		FileSource("testdata/access.log"),
	}
}

func readFixture(t *testing.T, fn func(*Entry)) *Stats {
	t.Helper()
	st, err := Read(context.Background(), fixtureSources(), fn)
	if err != nil {
		t.Fatal(err)
	}
	// 4 rotated lines, 23 current ones of which one names no host; no malformed line.
	if st.Lines != 27 || st.Records != 27 || st.Malformed != 0 || len(st.Truncated) != 0 {
		t.Fatalf("stats %+v, want 27 lines and records, nothing malformed", st)
	}
	return st
}

func TestGoldenDomains(t *testing.T) {
	for _, by := range []string{ByHost, BySession, ByClient} {
		t.Run(by, func(t *testing.T) {
			var f Filter
			rep := &DomainReport{}
			d, g := NewDomains(), NewGrouped(by)
			readFixture(t, func(e *Entry) {
				if !f.Match(e) {
					return
				}
				rep.Requests++
				if e.Blocked() {
					rep.Blocked++
				}
				d.Add(e)
				g.Add(e)
			})
			if by == ByHost {
				rep.Hosts = d.Rows()
			} else {
				rep.Groups = g.Groups()
			}
			var table, js bytes.Buffer
			if err := rep.WriteTable(&table); err != nil {
				t.Fatal(err)
			}
			if err := rep.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			golden(t, "domains-by-"+by+".txt", table.Bytes())
			golden(t, "domains-by-"+by+".json", js.Bytes())
		})
	}
}

func TestGoldenGenerate(t *testing.T) {
	existing, err := os.ReadFile("testdata/existing-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		opts  GenerateOptions
		notes []string // substrings, one per expected note
	}{
		// evil.example.org was denied by rule no-paste: left out, listed at the end with the rule.
		{"generate.yaml", GenerateOptions{}, []string{"left out 2 hosts refused as private, loopback or metadata addresses (169.254.169.254, intranet.corp.example)",
			"left out 1 target (host and port) that a deny rule refused"}},
		{"generate-include-denied.yaml", GenerateOptions{IncludeDenied: true}, []string{"left out 2 hosts refused as private"}},
		{"generate-collapse.yaml", GenerateOptions{Collapse: 3, ExcludeBlocked: true}, []string{"left out 2 hosts", "left out 1 target (host and port) that a deny rule refused"}},
		{"generate-merge.yaml", GenerateOptions{Collapse: 3, Merge: existing, MergeName: "existing-policy.yaml"}, []string{
			"mode changed from discovery to enforce",
			"1 host already allowed by existing-policy.yaml: codeload.github.com",
			"left out 2 hosts",
			"left out 1 target (host and port) that a deny rule refused",
		}},
		// Even with --include-denied, the deny rules of the merged policy stay and win.
		{"generate-merge-include-denied.yaml", GenerateOptions{Collapse: 3, IncludeDenied: true, Merge: existing, MergeName: "existing-policy.yaml"}, []string{
			"mode changed from discovery to enforce",
			"evil.example.org:443 is denied by rule no-paste of existing-policy.yaml: not added",
			"1 host already allowed by existing-policy.yaml: codeload.github.com",
			"left out 2 hosts",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			g, err := NewGenerator(c.opts)
			if err != nil {
				t.Fatal(err)
			}
			readFixture(t, func(e *Entry) {
				if e.Host != "" {
					g.Add(e)
				}
			})
			out, err := g.Generate()
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.name, out.YAML)
			if len(out.Notes) != len(c.notes) {
				t.Fatalf("notes %q, want %d", out.Notes, len(c.notes))
			}
			for i, n := range c.notes {
				if !strings.Contains(out.Notes[i], n) {
					t.Errorf("note %d is %q, want it to contain %q", i, out.Notes[i], n)
				}
			}
			p, err := policy.Parse(c.name, out.YAML)
			if err != nil {
				t.Fatalf("generated policy does not pass policy check: %v", err)
			}
			if p.Mode != policy.Enforce || len(p.Allow) == 0 {
				t.Fatalf("mode %s with %d allow rules", p.Mode, len(p.Allow))
			}
			// Replaying the log against what was generated from it denies only what never becomes
			// a rule: private addresses, and blocked requests when they were excluded or denied.
			r := NewReplayer(p)
			readFixture(t, func(e *Entry) {
				if e.Host != "" {
					r.Add(e)
				}
			})
			for _, d := range r.Result().WouldDeny {
				switch {
				case d.Host == "169.254.169.254" || d.Host == "intranet.corp.example":
				case d.Host == "evil.example.org" && (c.opts.ExcludeBlocked || c.opts.Merge != nil || !c.opts.IncludeDenied):
				default:
					t.Errorf("the generated policy would deny %s %v (%s)", d.Host, d.Ports, d.Reason)
				}
			}
		})
	}
}

func TestGenerateMergeKeepsExistingRules(t *testing.T) {
	existing := []byte("# head\nmode: discovery\nallow:\n  # keep me\n  - host: b.example\n    name: first\n  - host: a.example\n    name: second # trailing\n")
	g, err := NewGenerator(GenerateOptions{Merge: existing, MergeName: "p.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"a.example", "c.example"} {
		g.Add(&Entry{Host: h, Port: 443, Decision: "allow", Client: "10.0.0.1"})
	}
	out, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	got := string(out.YAML)
	for _, want := range []string{"# head\n", "  # keep me\n", "name: second # trailing\n", "mode: enforce\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("merged policy lost %q:\n%s", want, got)
		}
	}
	p, err := policy.Parse("merged", out.YAML)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, r := range p.Allow {
		hosts = append(hosts, r.Host)
	}
	// a.example is already allowed (by a rule without ports); only c.example is added, at the end.
	if strings.Join(hosts, " ") != "b.example a.example c.example" || out.Added != 1 {
		t.Errorf("allow hosts %v, added %d; want existing order kept and c.example appended", hosts, out.Added)
	}
}

func TestGenerateMergeCreatesAllow(t *testing.T) {
	for _, existing := range []string{
		"mode: discovery\n",
		"mode: discovery\nallow:\n",
		"mode: enforce\nallow: []\ndeny:\n  - host: x.example\n",
	} {
		g, err := NewGenerator(GenerateOptions{Merge: []byte(existing), MergeName: "p.yaml"})
		if err != nil {
			t.Fatal(err)
		}
		g.Add(&Entry{Host: "a.example", Port: 443, Decision: "allow"})
		out, err := g.Generate()
		if err != nil {
			t.Fatalf("%q: %v", existing, err)
		}
		p, err := policy.Parse("merged", out.YAML)
		if err != nil {
			t.Fatalf("%q: %v\n%s", existing, err, out.YAML)
		}
		if p.Mode != policy.Enforce || len(p.Allow) != 1 || p.Allow[0].Host != "a.example" || len(p.Deny) != strings.Count(existing, "host:") {
			t.Errorf("%q merged into:\n%s", existing, out.YAML)
		}
	}
}

// TestGoldenDomainsDNS: the DNS guard's records are counted beside the requests as lookups; a name
// looked up and never connected to is marked; policy generation and replay leave lookups out.
func TestGoldenDomainsDNS(t *testing.T) {
	rep := &DomainReport{}
	d := NewDomains()
	g, err := NewGenerator(GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := NewReplayer(policy.Default())
	if _, err := Read(context.Background(), []Source{FileSource("testdata/dns/access.log")}, func(e *Entry) {
		rep.Count(e)
		d.Add(e)
		g.Add(e)
		r.Add(e)
	}); err != nil {
		t.Fatal(err)
	}
	rep.Hosts = d.Rows()
	if rep.Requests != 2 || rep.Lookups != 5 || rep.Blocked != 0 {
		t.Errorf("totals: %d requests, %d lookups, %d blocked; want 2, 5, 0", rep.Requests, rep.Lookups, rep.Blocked)
	}
	var table, js bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	golden(t, "dns/domains.txt", table.Bytes())
	golden(t, "dns/domains.json", js.Bytes())
	gen, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, lookedUpOnly := range []string{"denied.test", "docs.allowed.test", "aaaaaaaaaa"} {
		if strings.Contains(string(gen.YAML), lookedUpOnly) {
			t.Errorf("policy generate wrote a rule for %s, which was only looked up:\n%s", lookedUpOnly, gen.YAML)
		}
	}
	byClient := NewGrouped(ByClient)
	if _, err := Read(context.Background(), []Source{FileSource("testdata/dns/access.log")}, byClient.Add); err != nil {
		t.Fatal(err)
	}
	var grouped bytes.Buffer
	if err := (&DomainReport{Groups: byClient.Groups()}).WriteTable(&grouped); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(grouped.String(), "client 10.213.0.1: 2 requests (0 blocked) to 5 hosts, 5 DNS lookups\n") {
		t.Errorf("--by client:\n%s", grouped.String())
	}
	if res := r.Result(); res.Requests != 2 {
		t.Errorf("replay counted %d requests, want the 2 connections", res.Requests)
	}
}
