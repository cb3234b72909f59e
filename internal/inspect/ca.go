// Package inspect holds what HTTPS inspection needs on the client's side: the CA that the agents
// trust (created by "swarm-proxy ca init", loaded with a check of its key's permissions), the leaf
// certificates minted from it per server name (ECDSA, short-lived, cached with a bound), the
// tls.Config that terminates an agent's TLS with them, and the roots that verify upstream servers.
// It decides nothing: the policy says which connections are inspected, the proxy serves them.
package inspect

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// File names that CreateCA writes in its directory.
const (
	CertFile = "ca.pem"
	KeyFile  = "ca-key.pem"
)

// CAValidity is how long a CA made by CreateCA is valid.
const CAValidity = 365 * 24 * time.Hour

// ErrKeyPermissions is returned (wrapped) by LoadCA for a key file that others may read.
var ErrKeyPermissions = errors.New("CA key is readable by others")

// CA is a loaded certificate authority: its certificate and the key that signs leaves.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Fingerprint is the SHA-256 of the CA certificate's DER, as colon-separated upper-case hex (the form
// browsers and openssl x509 -fingerprint -sha256 show).
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint is the SHA-256 of cert's DER, as colon-separated upper-case hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	parts := make([]string, len(sum))
	for i := range parts {
		parts[i] = h[2*i : 2*i+2]
	}
	return strings.Join(parts, ":")
}

// CreateCA makes an ECDSA P-256 CA valid for CAValidity from now, named for swarm-proxy and host,
// and writes DIR/ca.pem and DIR/ca-key.pem (mode 0600). It refuses to overwrite either file.
func CreateCA(dir, host string, now time.Time) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("ca init: %s exists: refusing to overwrite a CA (agents may trust it); remove it or choose another --dir", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("ca init: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	if host == "" {
		host = "unknown host"
	}
	name := pkix.Name{CommonName: "swarm-proxy inspection CA on " + host, Organization: []string{"swarm-proxy"}}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               name,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	// The key first, exclusively and 0600: a CA certificate without its key is harmless, the reverse
	// is not.
	if err := writeExclusive(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	if err := writeExclusive(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return nil, fmt.Errorf("ca init: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

func writeExclusive(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("inspect: crypto/rand failed: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	return n.Add(n, big.NewInt(1))
}

// LoadCA loads a CA certificate and its key (PEM). It refuses a key file that group or others may
// read or write (on systems with Unix permissions), a certificate that is not a CA, a key that does
// not match it, and a CA outside its validity at now.
func LoadCA(certFile, keyFile string, now time.Time) (*CA, error) {
	if err := checkKeyPermissions(keyFile); err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA key %s: %w", keyFile, err)
	}
	switch {
	case !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("load CA %s: the certificate is not a CA (create one with swarm-proxy ca init)", certFile)
	case !publicKeysEqual(cert.PublicKey, key.Public()):
		return nil, fmt.Errorf("load CA: %s does not hold the key of %s", keyFile, certFile)
	case now.Before(cert.NotBefore):
		return nil, fmt.Errorf("load CA %s: not valid before %s", certFile, cert.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(cert.NotAfter):
		return nil, fmt.Errorf("load CA %s: expired at %s; create a new one with swarm-proxy ca init and give it to the agents", certFile, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return &CA{Cert: cert, Key: key}, nil
}

func checkKeyPermissions(keyFile string) error {
	fi, err := os.Stat(keyFile)
	if err != nil {
		return fmt.Errorf("load CA: %w", err)
	}
	if runtime.GOOS == "windows" {
		return nil // no Unix permission bits; the ACLs are the operator's
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("load CA: %w: %s has mode %04o; run chmod 600 %s", ErrKeyPermissions, keyFile, perm, keyFile)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// ParseCertificatePEM parses the first CERTIFICATE block of data.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key of type %T cannot sign", k)
		}
		return s, nil
	}
}
