package inspect

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// UpstreamRoots returns the roots that verify upstream servers: the system's plus the certificates
// of extraFile (PEM; "" for none), which must hold at least one.
func UpstreamRoots(extraFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if extraFile == "" {
		return pool, nil
	}
	data, err := os.ReadFile(extraFile)
	if err != nil {
		return nil, fmt.Errorf("--upstream-ca: %w", err)
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("--upstream-ca %s: no PEM certificate in it", extraFile)
	}
	return pool, nil
}

// SystemBundleFiles are where Linux distributions, the BSDs and macOS keep the system roots as one
// PEM file, in the order crypto/x509 tries them.
var SystemBundleFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo, Arch, Alpine
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/pki/tls/cacert.pem",                           // OpenELEC
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
	"/etc/ssl/cert.pem",                                 // Alpine, macOS, the BSDs
}

// SystemBundle reads the system roots as PEM: from SSL_CERT_FILE when set, else from the first of
// SystemBundleFiles that exists. It returns the file it read.
func SystemBundle() ([]byte, string, error) {
	files := SystemBundleFiles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		files = []string{f}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("system roots: %w", err)
		}
		return data, f, nil
	}
	return nil, "", fmt.Errorf("system roots: none of %v exists; give one with --roots", files)
}

// Bundle returns the certificates of system (PEM) followed by the CA certificate caPEM, for tools that
// take one file of trusted roots. Only CERTIFICATE blocks are kept; the CA must be a CA certificate.
func Bundle(system, caPEM []byte) ([]byte, error) {
	ca, err := ParseCertificatePEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("ca bundle: CA: %w", err)
	}
	if !ca.IsCA {
		return nil, errors.New("ca bundle: the --ca certificate is not a CA")
	}
	var out bytes.Buffer
	n := 0
	for rest := system; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if bytes.Equal(b.Bytes, ca.Raw) {
			continue // already in the system store (update-ca-certificates ran)
		}
		pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})
		n++
	}
	if n == 0 {
		return nil, errors.New("ca bundle: the system roots hold no certificate")
	}
	fmt.Fprintf(&out, "# swarm-proxy inspection CA, SHA-256 %s\n", Fingerprint(ca))
	pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	return out.Bytes(), nil
}
