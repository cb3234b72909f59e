// Package logstats reads swarm-proxy access logs back and turns them into answers: which hosts were
// used and by whom (the domain report), a policy that allows what was observed (generation), and
// what a candidate policy would have done to the recorded traffic (replay).
//
// Logs are streamed a line at a time through a small hand-written decoder, so memory grows with the
// number of distinct hosts and clients, never with the size of the log, and plain and gzip-compressed
// (rotated) files can be mixed freely.
package logstats

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Source is one log input: a file (plain or gzip, detected from its first bytes) or a stream.
type Source struct {
	Name string
	Open func() (io.ReadCloser, error)
}

// FileSource reads the file at path.
func FileSource(path string) Source {
	return Source{Name: path, Open: func() (io.ReadCloser, error) { return os.Open(path) }}
}

// StreamSource reads r (for example standard input) under name.
func StreamSource(name string, r io.Reader) Source {
	return Source{Name: name, Open: func() (io.ReadCloser, error) { return io.NopCloser(r), nil }}
}

// MaxLineBytes is the longest line read; longer lines are counted as malformed and skipped.
const MaxLineBytes = 256 << 10

// MaxReportedLines is how many malformed line locations Stats keeps.
const MaxReportedLines = 5

// Location is a line in a source.
type Location struct {
	Source string
	Line   int64
	Reason string
}

func (l Location) String() string { return fmt.Sprintf("%s:%d", l.Source, l.Line) }

// Stats counts what Read saw.
type Stats struct {
	Lines     int64 // non-empty lines
	Records   int64 // lines decoded into an Entry
	Malformed int64 // lines that are not records
	// MalformedAt holds the first MaxReportedLines malformed lines.
	MalformedAt []Location
	// Truncated lists sources whose compressed stream ended early or could not be read to the end;
	// the lines before the damage were used.
	Truncated []string
	// NotLogs are the sources that had lines but not one record: not access logs.
	NotLogs []NotLog
}

// NotLog is a source in which no line is a record.
type NotLog struct {
	Source string
	Lines  int64
	First  Location // the first line and why it is not a record; zero when not kept
}

// Warnings are the problems worth telling a person about, one sentence each; nil when there were none.
func (s *Stats) Warnings() []string {
	var out []string
	if s.Malformed > 0 {
		locs := make([]string, len(s.MalformedAt))
		for i, l := range s.MalformedAt {
			locs[i] = l.String()
		}
		more := ""
		if s.Malformed > int64(len(s.MalformedAt)) {
			more = ", ..."
		}
		out = append(out, fmt.Sprintf("skipped %d malformed %s of %d (%s%s; first: %s)",
			s.Malformed, plural(s.Malformed, "line"), s.Lines, strings.Join(locs, ", "), more, s.MalformedAt[0].Reason))
	}
	return append(out, s.Truncated...)
}

func plural(n int64, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// Read decodes every record of every source, in order, and calls fn with each. Entries are reused:
// fn must copy what it keeps (its strings may be kept as they are). Malformed lines and damaged
// compressed streams are counted in Stats, not returned as errors; an error is returned only when a
// source cannot be opened or read at all, or when ctx ends.
func Read(ctx context.Context, sources []Source, fn func(*Entry)) (*Stats, error) {
	st := &Stats{}
	d := newDecoder()
	br := bufio.NewReaderSize(nil, MaxLineBytes)
	for _, src := range sources {
		lines, records, reported := st.Lines, st.Records, len(st.MalformedAt)
		if err := readOne(ctx, src, d, br, st, fn); err != nil {
			return st, err
		}
		if st.Lines > lines && st.Records == records {
			nl := NotLog{Source: src.Name, Lines: st.Lines - lines}
			if len(st.MalformedAt) > reported {
				nl.First = st.MalformedAt[reported]
			}
			st.NotLogs = append(st.NotLogs, nl)
		}
	}
	return st, nil
}

func readOne(ctx context.Context, src Source, d *decoder, br *bufio.Reader, st *Stats, fn func(*Entry)) error {
	rc, err := src.Open()
	if err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	defer rc.Close()
	br.Reset(rc)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			st.Truncated = append(st.Truncated, fmt.Sprintf("%s: not a readable gzip file: %v", src.Name, err))
			return nil
		}
		defer zr.Close()
		r = zr
	}
	lines := bufio.NewReaderSize(r, MaxLineBytes)
	if r == io.Reader(br) {
		lines = br
	}
	var (
		e        Entry
		lineNo   int64
		skipping bool // the rest of a line longer than the buffer is being skipped
	)
	for {
		line, err := lines.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !skipping {
				lineNo++
				skipping = true
				st.Lines++
				malformed(st, src.Name, lineNo, "line longer than 256 KiB")
			}
			continue
		}
		if skipping {
			skipping = false
		} else if len(line) > 0 {
			lineNo++
			if lineNo&0xfff == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if b := bytes.TrimRight(line, "\r\n"); len(bytes.TrimSpace(b)) > 0 {
				st.Lines++
				if derr := d.decode(b, &e); derr != nil {
					malformed(st, src.Name, lineNo, derr.Error())
				} else {
					st.Records++
					fn(&e)
				}
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) ||
			errors.As(err, new(flate.CorruptInputError)):
			st.Truncated = append(st.Truncated, fmt.Sprintf("%s: compressed stream is truncated or damaged after line %d (%v); the lines before it were used", src.Name, lineNo, err))
			return nil
		default:
			return fmt.Errorf("read log %s: %w", src.Name, err)
		}
	}
}

func malformed(st *Stats, source string, line int64, reason string) {
	st.Malformed++
	if len(st.MalformedAt) < MaxReportedLines {
		st.MalformedAt = append(st.MalformedAt, Location{Source: source, Line: line, Reason: reason})
	}
}
