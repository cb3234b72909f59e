package cli

import (
	"strings"
	"testing"
)

func TestProviderTLS(t *testing.T) {
	pin := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		name          string
		plaintext     bool
		ca, pin, want string // want: "" for a config, "nil" for plaintext, else an error substring
	}{
		{"system roots", false, "", "", ""},
		{"pinned", false, "", pin, ""},
		{"pinned with colons", false, "", "SHA256:" + strings.Repeat("AB:", 31) + "AB", ""},
		{"plaintext", true, "", "", "nil"},
		{"plaintext and a pin", true, "", pin, "goes with neither"},
		{"pin and ca", false, "ca.pem", pin, "not both"},
		{"short pin", false, "", "sha256:abcd", "64 hex digits"},
		{"missing ca", false, "/nonexistent/ca.pem", "", "--ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := providerTLS(tt.plaintext, tt.ca, tt.pin)
			switch tt.want {
			case "":
				if err != nil || cfg == nil || cfg.MinVersion < 0x0304 {
					t.Fatalf("providerTLS = %v, %v; want a TLS 1.3 config", cfg, err)
				}
			case "nil":
				if err != nil || cfg != nil {
					t.Fatalf("providerTLS = %v, %v; want plaintext", cfg, err)
				}
			default:
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("providerTLS error %v, want %q", err, tt.want)
				}
			}
		})
	}
}
