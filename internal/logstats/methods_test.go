package logstats

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// manyMethods returns entries for one host and client with n distinct methods and n distinct ports
// (modulo 65535), as an agent probing the log tools would send.
func manyMethods(n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{Time: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), Client: "10.0.0.5", Host: "api.example.com",
			Method: fmt.Sprintf("M%06d", i), Port: 1 + i%65535, Decision: "allow"}
	}
	return out
}

// TestManyMethodsComment: 100k distinct methods from one agent give a comment that names four and
// counts the rest, not an 800 KB comment.
func TestManyMethodsComment(t *testing.T) {
	g, err := NewGenerator(GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	entries := manyMethods(100_000)
	for i := range entries {
		entries[i].Port = 80
		g.Add(&entries[i])
	}
	out, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if len(out.YAML) > 2000 {
		t.Errorf("generated policy is %d bytes, want a short comment:\n%.500s", len(out.YAML), out.YAML)
	}
	if want := "M000000 M000001 M000002 M000003 and 99,996 others"; !strings.Contains(string(out.YAML), want) {
		t.Errorf("comment lacks %q:\n%s", want, out.YAML)
	}
}

func TestMethodList(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want string
	}{
		{[]string{"GET"}, "GET"},
		{[]string{"CONNECT", "GET", "HEAD", "POST"}, "CONNECT GET HEAD POST"},
		{[]string{"A", "B", "C", "D", "E"}, "A B C D and 1 other"},
	} {
		if got := methodList(c.in); got != c.want {
			t.Errorf("methodList(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 99998: "99,998", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestSmallSetGoesToMap: beyond smallSetMax values the set is a map, so adding is not a scan of
// every value seen (the quadratic cost of 100k distinct methods per host).
func TestSmallSetGoesToMap(t *testing.T) {
	var s smallSet[string]
	for i := range smallSetMax {
		s.add(fmt.Sprint(i))
		s.add(fmt.Sprint(i))
	}
	if s.m != nil || len(s.list) != smallSetMax {
		t.Fatalf("after %d values: list %d, map %v", smallSetMax, len(s.list), s.m != nil)
	}
	s.add("x")
	s.add("0")
	if s.m == nil || len(s.m) != smallSetMax+1 || s.list != nil {
		t.Fatalf("after %d values: list %v, map %d", smallSetMax+1, s.list, len(s.m))
	}
	if got := s.sorted(); !slices.IsSorted(got) || len(got) != smallSetMax+1 {
		t.Fatalf("sorted = %v", got)
	}
}

// BenchmarkDomainsManyMethods adds 20k entries of distinct methods and ports for one host: linear
// with the set, quadratic with a slice.
func BenchmarkDomainsManyMethods(b *testing.B) {
	entries := manyMethods(20_000)
	for b.Loop() {
		d := NewDomains()
		for i := range entries {
			d.Add(&entries[i])
		}
		if rows := d.Rows(); len(rows[0].Methods) != len(entries) {
			b.Fatal(len(rows[0].Methods))
		}
	}
}
