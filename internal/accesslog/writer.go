package accesslog

import (
	"fmt"
	"io"
	"os"
	"sync"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Rotation bounds a log file: it is rotated when it reaches MaxSizeMB, and at most MaxBackups old
// files are kept (gzip-compressed when Compress is set).
type Rotation struct {
	MaxSizeMB  int
	MaxBackups int
	Compress   bool
}

// DefaultRotation is used by the CLI unless flags say otherwise.
var DefaultRotation = Rotation{MaxSizeMB: 100, MaxBackups: 10, Compress: true}

// Writer writes records as JSON lines. It is safe for concurrent use; each record is written with a
// single Write call so lines never interleave.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
	c  io.Closer
}

// lineBufs holds encoding buffers, so that records are encoded outside the writer's lock without an
// allocation each.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// NewWriter writes records to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// OpenFile writes records to path, rotating it by size. The directory must exist.
func OpenFile(path string, r Rotation) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open access log: %w", err)
	}
	f.Close()
	lj := &lumberjack.Logger{Filename: path, MaxSize: r.MaxSizeMB, MaxBackups: r.MaxBackups, Compress: r.Compress}
	return &Writer{w: lj, c: lj}, nil
}

// Write appends one record.
func (w *Writer) Write(rec *Record) error {
	bp := lineBufs.Get().(*[]byte)
	line := append(rec.AppendJSON((*bp)[:0]), '\n')
	w.mu.Lock()
	_, err := w.w.Write(line)
	w.mu.Unlock()
	*bp = line
	lineBufs.Put(bp)
	if err != nil {
		return fmt.Errorf("write access log: %w", err)
	}
	return nil
}

// Close closes the underlying file, if the writer owns one.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.c == nil {
		return nil
	}
	return w.c.Close()
}
