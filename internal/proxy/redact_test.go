package proxy

import (
	"bytes"
	"errors"
	"log"
	"log/slog"
	"strings"
	"testing"
)

// TestTargetLogRedacts: what ReverseProxy logs about a target (a body that broke off with the
// target's own words) goes through Server.Redact, at debug level.
func TestTargetLogRedacts(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{
		Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Redact: func(text string) string { return strings.ReplaceAll(text, "ghp_VALUE", "[redacted]") },
	}
	log.New(targetLog{s}, "", 0).Printf("httputil: ReverseProxy read error during body copy: %v", errors.New(`http2: server sent GOAWAY; debug="ghp_VALUE"`))
	out := buf.String()
	if strings.Contains(out, "ghp_VALUE") || !strings.Contains(out, "[redacted]") || !strings.Contains(out, "level=DEBUG") || strings.Contains(out, `\n"`) {
		t.Errorf("log line: %s", out)
	}
}
