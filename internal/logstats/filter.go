package logstats

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Filter selects entries. The zero Filter selects every entry that names a host.
type Filter struct {
	Since, Until time.Time // inclusive bounds; zero means open
	Sessions     []string  // any of these sessions; empty means any
	Clients      []netip.Prefix
	BlockedOnly  bool
	AllowedOnly  bool
}

// Match reports whether e passes the filter. Entries without a host (requests refused before a
// target was known) never match: there is no destination to report.
func (f *Filter) Match(e *Entry) bool {
	if e.Host == "" {
		return false
	}
	if !f.Since.IsZero() && e.Time.Before(f.Since) || !f.Until.IsZero() && e.Time.After(f.Until) {
		return false
	}
	if f.BlockedOnly && !e.Blocked() || f.AllowedOnly && e.Blocked() {
		return false
	}
	if len(f.Sessions) > 0 && !slices.Contains(f.Sessions, e.Session) {
		return false
	}
	if len(f.Clients) > 0 {
		a, err := netip.ParseAddr(e.Client)
		if err != nil {
			return false
		}
		a = a.Unmap()
		if !slices.ContainsFunc(f.Clients, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return false
		}
	}
	return true
}

// ParseClient parses a --client value: an address or a prefix such as 10.0.0.0/8.
func ParseClient(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("client %q: want an address or a prefix like 10.0.0.0/8", s)
	}
	return p.Masked(), nil
}

// ParseTime parses a --since value: an RFC 3339 time, a date (its start, midnight UTC), or a
// duration meaning that long before now ("2h").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 && !strings.HasPrefix(s, "-") {
		return now.Add(-d).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration before now (2h)", s)
}

// ParseUntil parses an --until value like ParseTime, except that a date means the end of that day:
// "--until 2026-11-24" includes the 24th. As Filter.Until is inclusive, the bound is the last
// instant before the next day's midnight (UTC).
func ParseUntil(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.AddDate(0, 0, 1).Add(-time.Nanosecond), nil
	}
	return ParseTime(s, now)
}
