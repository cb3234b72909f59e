package logstats

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// DomainReport is the JSON form of the domain report: Hosts for the per-host report, Groups for a
// report by session or client.
type DomainReport struct {
	Requests  int64     `json:"requests"`
	Blocked   int64     `json:"blocked"`
	Lookups   int64     `json:"lookups,omitempty"` // DNS guard records, not counted as requests
	Malformed int64     `json:"malformed_lines"`
	Hosts     []HostRow `json:"hosts,omitempty"`
	Groups    []Group   `json:"groups,omitempty"`
}

// Count adds e to the report's totals: a request, or a DNS lookup.
func (r *DomainReport) Count(e *Entry) {
	if e.Method == accesslog.MethodDNS {
		r.Lookups++
		return
	}
	r.Requests++
	if e.Blocked() {
		r.Blocked++
	}
}

// WriteJSON writes the report as one indented JSON document.
func (r *DomainReport) WriteJSON(w io.Writer) error {
	if r.Hosts == nil && r.Groups == nil {
		r.Hosts = []HostRow{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable writes the report as aligned columns for a terminal.
func (r *DomainReport) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	if r.Groups != nil {
		for i, g := range r.Groups {
			if i > 0 {
				fmt.Fprintln(tw)
			}
			fmt.Fprintf(tw, "%s %s: %d %s (%d blocked) to %d %s", g.Kind, printable(g.Key),
				g.Requests, plural(g.Requests, "request"), g.Blocked, len(g.Hosts), plural(int64(len(g.Hosts)), "host"))
			if g.Lookups > 0 {
				fmt.Fprintf(tw, ", %d DNS %s", g.Lookups, plural(g.Lookups, "lookup"))
			}
			fmt.Fprintln(tw)
			writeHostRows(tw, g.Hosts)
		}
	} else {
		writeHostRows(tw, r.Hosts)
		var first, last time.Time
		for _, h := range r.Hosts {
			if first.IsZero() || h.FirstSeen.Before(first) {
				first = h.FirstSeen
			}
			if h.LastSeen.After(last) {
				last = h.LastSeen
			}
		}
		fmt.Fprintf(tw, "\n%d %s, %d %s (%d blocked)", len(r.Hosts), plural(int64(len(r.Hosts)), "host"),
			r.Requests, plural(r.Requests, "request"), r.Blocked)
		if r.Lookups > 0 {
			fmt.Fprintf(tw, ", %d DNS %s", r.Lookups, plural(r.Lookups, "lookup"))
		}
		if !first.IsZero() {
			fmt.Fprintf(tw, ", %s to %s", stamp(first), stamp(last))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func writeHostRows(tw io.Writer, rows []HostRow) {
	sessions, lookups := false, false
	for _, h := range rows {
		sessions = sessions || len(h.Sessions) > 0
		lookups = lookups || h.Lookups > 0
	}
	fmt.Fprint(tw, "HOST\tREQUESTS\tALLOWED\tBLOCKED\tMETHODS\tPORTS\tOUT\tIN\tFIRST SEEN\tLAST SEEN\tCLIENTS")
	if sessions {
		fmt.Fprint(tw, "\tSESSIONS")
	}
	if lookups {
		fmt.Fprint(tw, "\tDNS LOOKUPS")
	}
	fmt.Fprintln(tw)
	for _, h := range rows {
		ports := make([]string, len(h.Ports))
		for i, p := range h.Ports {
			ports[i] = strconv.Itoa(p)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s", printable(h.Host), h.Requests, h.Allowed, h.Blocked,
			list(h.Methods, 4), list(ports, 4), HumanBytes(h.BytesOut), HumanBytes(h.BytesIn),
			stamp(h.FirstSeen), stamp(h.LastSeen), list(h.Clients, 3))
		if sessions {
			fmt.Fprintf(tw, "\t%s", list(h.Sessions, 3))
		}
		if lookups {
			fmt.Fprintf(tw, "\t%s", lookupCell(h))
		}
		fmt.Fprintln(tw)
	}
}

// lookupCell says how often the DNS guard was asked for the host, and whether it was ever connected to.
func lookupCell(h HostRow) string {
	if h.Lookups == 0 {
		return "-"
	}
	s := strconv.FormatInt(h.Lookups, 10)
	if h.LookupsRefused > 0 {
		s += fmt.Sprintf(" (%d refused)", h.LookupsRefused)
	}
	if h.LookupOnly {
		s += ", looked up only: never connected"
	}
	return s
}

// list joins up to n items with commas and says how many more there are.
func list(items []string, n int) string {
	if len(items) == 0 {
		return "-"
	}
	shown := make([]string, min(n, len(items)))
	for i := range shown {
		shown[i] = printable(items[i])
	}
	if len(items) <= n {
		return strings.Join(shown, ",")
	}
	return fmt.Sprintf("%s,+%d", strings.Join(shown, ","), len(items)-n)
}

// printable returns s, or s quoted when it holds characters a terminal would interpret (escape
// sequences, tabs, newlines): log fields come from clients and must not drive the terminal or
// break the columns.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.QuoteToGraphic(s)
		}
	}
	return s
}

// prose joins up to n items with ", " for sentences.
func prose(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// HumanBytes formats n with a binary unit: "512B", "1.5KiB", "20MiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	suffix := [...]string{"KiB", "MiB", "GiB", "TiB", "PiB"}[i]
	if v >= 100 {
		return fmt.Sprintf("%.0f%s", v, suffix)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + suffix
}
