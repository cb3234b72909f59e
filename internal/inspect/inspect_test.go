package inspect

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)

func newCA(t *testing.T) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := CreateCA(dir, "build-host", t0)
	if err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

func TestCreateCA(t *testing.T) {
	ca, dir := newCA(t)
	c := ca.Cert
	if !c.IsCA || !c.MaxPathLenZero || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("not a leaf-signing CA: IsCA %v MaxPathLenZero %v usage %v", c.IsCA, c.MaxPathLenZero, c.KeyUsage)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", c.PublicKey)
	}
	if got := c.NotAfter.Sub(t0); got != 365*24*time.Hour {
		t.Errorf("valid for %v after creation, want one year", got)
	}
	if !strings.Contains(c.Subject.CommonName, "swarm-proxy") || !strings.Contains(c.Subject.CommonName, "build-host") {
		t.Errorf("CN %q should name swarm-proxy and the host", c.Subject.CommonName)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %04o, want 0600", fi.Mode().Perm())
	}
	sum := sha256.Sum256(c.Raw)
	if want := strings.ToUpper(hex.EncodeToString(sum[:2])); !strings.HasPrefix(ca.Fingerprint(), want[:2]+":"+want[2:]) || len(ca.Fingerprint()) != 32*3-1 {
		t.Errorf("fingerprint %q", ca.Fingerprint())
	}
	loaded, err := LoadCA(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile), t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Fingerprint() != ca.Fingerprint() {
		t.Error("loaded CA differs from the created one")
	}
	// A second init must not overwrite either file.
	before, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if _, err := CreateCA(dir, "x", t0); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second CreateCA: %v", err)
	}
	os.Remove(filepath.Join(dir, CertFile))
	if _, err := CreateCA(dir, "x", t0); err == nil {
		t.Fatal("CreateCA overwrote an existing key")
	}
	if after, _ := os.ReadFile(filepath.Join(dir, KeyFile)); string(after) != string(before) {
		t.Fatal("the key changed")
	}
}

func TestLoadCARefusals(t *testing.T) {
	_, dir := newCA(t)
	cert, key := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if runtime.GOOS != "windows" {
		for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
			os.Chmod(key, mode)
			if _, err := LoadCA(cert, key, t0); !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600") {
				t.Errorf("mode %04o: %v, want ErrKeyPermissions with the fix", mode, err)
			}
		}
		os.Chmod(key, 0o400)
		if _, err := LoadCA(cert, key, t0); err != nil {
			t.Errorf("mode 0400: %v", err)
		}
		os.Chmod(key, 0o600)
	}
	if _, err := LoadCA(cert, key, t0.Add(366*24*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired CA: %v", err)
	}
	_, other := newCA(t)
	if _, err := LoadCA(cert, filepath.Join(other, KeyFile), t0); err == nil || !strings.Contains(err.Error(), "does not hold the key") {
		t.Errorf("mismatched key: %v", err)
	}
	// A leaf is not a CA.
	ca, _ := LoadCA(cert, key, t0)
	leaf, err := (&Minter{CA: ca, Now: func() time.Time { return t0 }}).Certificate("a.example")
	if err != nil {
		t.Fatal(err)
	}
	leafDir := t.TempDir()
	os.WriteFile(filepath.Join(leafDir, "c.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}), 0o644)
	kder, _ := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	os.WriteFile(filepath.Join(leafDir, "k.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	if _, err := LoadCA(filepath.Join(leafDir, "c.pem"), filepath.Join(leafDir, "k.pem"), t0); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("leaf as CA: %v", err)
	}
}

func TestMinterLeaf(t *testing.T) {
	ca, _ := newCA(t)
	now := t0
	m := &Minter{CA: ca, Now: func() time.Time { return now }}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, name := range []string{"api.github.com", "192.0.2.7", "2001:db8::1"} {
		c, err := m.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Leaf.PublicKey.(*ecdsa.PublicKey); !ok {
			t.Errorf("%s: key %T, want ECDSA", name, c.Leaf.PublicKey)
		}
		if life := c.Leaf.NotAfter.Sub(now); life > 25*time.Hour {
			t.Errorf("%s: valid for %v, want short-lived", name, life)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: now}); err != nil {
			t.Errorf("%s: leaf does not verify against the CA: %v", name, err)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: pool, CurrentTime: now}); err == nil {
			t.Errorf("%s: leaf also verifies for another name", name)
		}
	}
	// A leaf never outlives its CA.
	now = ca.Cert.NotAfter.Add(-time.Hour)
	c, err := m.Certificate("late.example")
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("leaf ends %v after the CA %v", c.Leaf.NotAfter, ca.Cert.NotAfter)
	}
}

func TestMinterCache(t *testing.T) {
	ca, _ := newCA(t)
	now := t0
	var hits, misses int
	var mu sync.Mutex
	m := &Minter{CA: ca, CacheSize: 2, Now: func() time.Time { return now }, Observe: func(hit bool, _ time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if hit {
			hits++
		} else {
			misses++
		}
	}}
	a1, _ := m.Certificate("a.example")
	a2, _ := m.Certificate("a.example")
	if a1 != a2 || hits != 1 || misses != 1 {
		t.Fatalf("second lookup not from the cache: same %v, hits %d, misses %d", a1 == a2, hits, misses)
	}
	m.Certificate("b.example")
	m.Certificate("a.example") // a is now the most recent
	m.Certificate("c.example") // evicts b
	if m.Cached() != 2 {
		t.Fatalf("cache holds %d, want the bound 2", m.Cached())
	}
	misses = 0
	m.Certificate("a.example")
	if misses != 0 {
		t.Error("a was evicted instead of the least recently used b")
	}
	m.Certificate("b.example")
	if misses != 1 {
		t.Error("b was not evicted")
	}
	// Past three quarters of its life a leaf is minted anew.
	now = now.Add(19 * time.Hour)
	a3, _ := m.Certificate("a.example")
	if a3 == a1 {
		t.Error("a leaf due for renewal was served from the cache")
	}

	// Concurrent handshakes for one new name mint once.
	misses = 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() { defer wg.Done(); m.Certificate("burst.example") }()
	}
	wg.Wait()
	if misses != 1 {
		t.Errorf("16 concurrent lookups minted %d times, want 1", misses)
	}
}

// TestServerConfig runs real TLS handshakes over loopback against the config.
func TestServerConfig(t *testing.T) {
	m := &Minter{}
	ca2, err := CreateCA(t.TempDir(), "h", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m.CA = ca2
	pool := x509.NewCertPool()
	pool.AddCert(ca2.Cert)
	handshake := func(host string, client *tls.Config) (*tls.ConnectionState, error) {
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		srv := tls.Server(c1, m.ServerConfig(host))
		errc := make(chan error, 1)
		go func() { errc <- srv.Handshake(); c1.Close() }()
		cl := tls.Client(c2, client)
		cerr := cl.Handshake()
		if cerr != nil {
			c2.Close() // the server may still wait for a hello that never comes
		}
		serr := <-errc
		if cerr != nil {
			return nil, errors.Join(cerr, serr)
		}
		st := cl.ConnectionState()
		return &st, serr
	}
	st, err := handshake("api.github.com", &tls.Config{ServerName: "api.github.com", RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if st.NegotiatedProtocol != "h2" || st.Version < tls.VersionTLS12 {
		t.Errorf("ALPN %q version %x", st.NegotiatedProtocol, st.Version)
	}
	st, err = handshake("api.github.com", &tls.Config{ServerName: "API.GitHub.com.", RootCAs: pool, NextProtos: []string{"http/1.1"}})
	if err != nil || st.NegotiatedProtocol != "http/1.1" {
		t.Fatalf("SNI spelled differently: %v", err)
	}
	// No SNI (an IP literal CONNECT): the leaf names the CONNECT host.
	st, err = handshake("192.0.2.7", &tls.Config{RootCAs: pool, InsecureSkipVerify: true})
	if err != nil || len(st.PeerCertificates[0].IPAddresses) != 1 || st.PeerCertificates[0].IPAddresses[0].String() != "192.0.2.7" {
		t.Fatalf("no SNI: %v", err)
	}
	// An SNI for another host than the one decided gets no certificate.
	if _, err := handshake("api.github.com", &tls.Config{ServerName: "evil.example", RootCAs: pool}); err == nil || !errors.Is(err, ErrSNIMismatch) {
		t.Errorf("SNI mismatch: %v, want ErrSNIMismatch", err)
	}
	// TLS 1.1 and older are refused.
	if _, err := handshake("api.github.com", &tls.Config{ServerName: "api.github.com", RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1 handshake succeeded")
	}
}

func TestBundle(t *testing.T) {
	ca, dir := newCA(t)
	caPEM, _ := os.ReadFile(filepath.Join(dir, CertFile))
	_, other := newCA(t)
	sysPEM, _ := os.ReadFile(filepath.Join(other, CertFile))
	system := append([]byte("# a comment\n"), sysPEM...)
	system = append(system, caPEM...) // already installed: kept once
	b, err := Bundle(system, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("bundle has no certificates")
	}
	if n := strings.Count(string(b), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("bundle has %d certificates, want 2", n)
	}
	if !strings.Contains(string(b), ca.Fingerprint()) {
		t.Error("bundle does not name the CA's fingerprint")
	}
	if _, err := Bundle(nil, caPEM); err == nil {
		t.Error("empty system roots accepted")
	}
	if _, err := Bundle(system, []byte("nope")); err == nil {
		t.Error("a CA file without a certificate accepted")
	}
}

func TestUpstreamRoots(t *testing.T) {
	_, dir := newCA(t)
	if _, err := UpstreamRoots(filepath.Join(dir, CertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := UpstreamRoots(filepath.Join(dir, KeyFile)); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("key as roots: %v", err)
	}
	if _, err := UpstreamRoots(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("missing file accepted")
	}
}
