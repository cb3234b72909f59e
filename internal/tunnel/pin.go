package tunnel

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Fingerprint names a certificate the way --broker-fingerprint and a ticket's broker_fingerprint
// do: "sha256:" and the lower-case hex SHA-256 of its DER bytes.
func Fingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(h[:])
}

// FingerprintFile returns the Fingerprint of the first certificate in a PEM file.
func FingerprintFile(certFile string) (string, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return "", err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return "", fmt.Errorf("%s: no PEM certificate in it", certFile)
		}
		if blk.Type == "CERTIFICATE" {
			return Fingerprint(blk.Bytes), nil
		}
	}
}

// PinnedTLS returns the provider's TLS settings for a broker whose certificate is pinned by its
// fingerprint ("sha256:<64 hex digits>", colons between bytes allowed) instead of verified by a CA:
// the handshake fails unless the broker's certificate has exactly that fingerprint.
func PinnedTLS(fingerprint string) (*tls.Config, error) {
	hexPart, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(fingerprint)), "sha256:")
	want, err := hex.DecodeString(strings.ReplaceAll(hexPart, ":", ""))
	if !ok || err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("broker fingerprint %q: want sha256: and 64 hex digits, as the broker prints at startup", fingerprint)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is not verified against any CA: the pin below is the whole check.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the broker sent no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if !bytes.Equal(got[:], want) {
				return fmt.Errorf("the broker's certificate is %s, not the pinned %s", Fingerprint(cs.PeerCertificates[0].Raw), "sha256:"+hex.EncodeToString(want))
			}
			return nil
		},
	}, nil
}
