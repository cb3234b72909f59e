package logstats

import (
	"testing"
	"time"
)

func TestParseUntil(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	endOf24th := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)
	for _, c := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2026-11-24", endOf24th, true},
		{"2026-12-31", time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond), true},
		{"2026-11-24T10:00:00Z", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
		{"2h", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
		{"tomorrow", time.Time{}, false},
	} {
		got, err := ParseUntil(c.in, now)
		if (err == nil) != c.ok || !got.Equal(c.want) {
			t.Errorf("ParseUntil(%q) = %v, %v; want %v (ok %v)", c.in, got, err, c.want, c.ok)
		}
	}
}

// TestFilterDateBounds: --since D --until D selects exactly day D.
func TestFilterDateBounds(t *testing.T) {
	since, err := ParseTime("2026-11-24", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	until, err := ParseUntil("2026-11-24", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	f := Filter{Since: since, Until: until}
	for _, c := range []struct {
		at   time.Time
		want bool
	}{
		{time.Date(2026, 11, 23, 23, 59, 59, 999999999, time.UTC), false},
		{time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), true},
		{time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
		{time.Date(2026, 11, 24, 23, 59, 59, 999999999, time.UTC), true},
		{time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), false},
	} {
		if got := f.Match(&Entry{Host: "example.com", Time: c.at}); got != c.want {
			t.Errorf("Match at %s = %v, want %v", c.at.Format(time.RFC3339Nano), got, c.want)
		}
	}
}
