package inspect

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Defaults of a Minter.
const (
	// DefaultLeafValidity is how long a minted leaf is valid; it is re-minted after three quarters of it.
	DefaultLeafValidity = 24 * time.Hour
	// DefaultCacheSize bounds the leaves kept, least recently used dropped first.
	DefaultCacheSize = 1024
)

// leafBackdate is how far before now a leaf's validity starts, for clients whose clock is behind.
const leafBackdate = time.Hour

// Minter mints leaf certificates signed by a CA, one per server name, and caches them.
type Minter struct {
	// CA signs the leaves.
	CA *CA
	// Validity of a leaf; zero means DefaultLeafValidity. A leaf never outlives the CA.
	Validity time.Duration
	// CacheSize bounds the cache; zero means DefaultCacheSize.
	CacheSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observe, when set, is told of each lookup: whether the cache had the leaf, and how long minting
	// took when it did not.
	Observe func(hit bool, mint time.Duration)

	mu       sync.Mutex
	lru      list.List // of *leafEntry, most recently used first
	byName   map[string]*list.Element
	inflight map[string]*mintCall
}

type leafEntry struct {
	name    string
	cert    *tls.Certificate
	renewAt time.Time
}

// mintCall lets concurrent handshakes for one name wait for a single mint.
type mintCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// Certificate returns a leaf for name (a normalised host name or IP literal), from the cache when it
// holds one that is not due for renewal.
func (m *Minter) Certificate(name string) (*tls.Certificate, error) {
	now := m.now()
	m.mu.Lock()
	if m.byName == nil {
		m.byName = make(map[string]*list.Element)
		m.inflight = make(map[string]*mintCall)
	}
	if el, ok := m.byName[name]; ok {
		e := el.Value.(*leafEntry)
		if now.Before(e.renewAt) {
			m.lru.MoveToFront(el)
			m.mu.Unlock()
			m.observe(true, 0)
			return e.cert, nil
		}
	}
	if c, ok := m.inflight[name]; ok {
		m.mu.Unlock()
		<-c.done
		m.observe(true, 0)
		return c.cert, c.err
	}
	c := &mintCall{done: make(chan struct{})}
	m.inflight[name] = c
	m.mu.Unlock()

	start := time.Now()
	c.cert, c.err = m.mint(name, now)
	m.observe(false, time.Since(start))

	m.mu.Lock()
	delete(m.inflight, name)
	if c.err == nil {
		m.store(name, c.cert, now)
	}
	m.mu.Unlock()
	close(c.done)
	return c.cert, c.err
}

// store puts a leaf in the cache, dropping the least recently used beyond the bound. m.mu is held.
func (m *Minter) store(name string, cert *tls.Certificate, now time.Time) {
	life := cert.Leaf.NotAfter.Sub(now)
	e := &leafEntry{name: name, cert: cert, renewAt: now.Add(life * 3 / 4)}
	if el, ok := m.byName[name]; ok {
		el.Value = e
		m.lru.MoveToFront(el)
		return
	}
	m.byName[name] = m.lru.PushFront(e)
	size := m.CacheSize
	if size <= 0 {
		size = DefaultCacheSize
	}
	for m.lru.Len() > size {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.byName, old.Value.(*leafEntry).name)
	}
}

// Cached returns how many leaves the cache holds.
func (m *Minter) Cached() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}

func (m *Minter) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Minter) observe(hit bool, d time.Duration) {
	if m.Observe != nil {
		m.Observe(hit, d)
	}
}

// mint makes a leaf for name: a fresh P-256 key, the name as its only subject alternative name, valid
// from an hour ago for the validity (never past the CA's own end).
func (m *Minter) mint(name string, now time.Time) (*tls.Certificate, error) {
	if name == "" {
		return nil, errors.New("mint leaf: empty server name")
	}
	validity := m.Validity
	if validity <= 0 {
		validity = DefaultLeafValidity
	}
	notAfter := now.Add(validity)
	if notAfter.After(m.CA.Cert.NotAfter) {
		notAfter = m.CA.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("mint leaf for %s: the CA expired at %s", name, m.CA.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"swarm-proxy inspection"}},
		NotBefore:    now.Add(-leafBackdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if a, err := netip.ParseAddr(name); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.CA.Cert, &key.PublicKey, m.CA.Key)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %s: %w", name, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ErrSNIMismatch is returned (wrapped) by a handshake whose server name is not the host that was
// decided: the agent would get a certificate for a host the policy did not look at.
var ErrSNIMismatch = errors.New("TLS server name does not match the CONNECT host")

// ServerConfig returns the tls.Config that terminates an agent's TLS for a connection to host (the
// normalised CONNECT host, which the policy decided). The leaf is minted for the client's server name
// (SNI), which must name host; without SNI it is minted for host. TLS 1.2 and later; ALPN offers h2
// and http/1.1.
func (m *Minter) ServerConfig(host string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := host
			if hello.ServerName != "" {
				sni, err := policy.NormalizeHost(hello.ServerName)
				if err != nil || sni != host {
					return nil, fmt.Errorf("%w: SNI %q, CONNECT host %q", ErrSNIMismatch, truncate(hello.ServerName), host)
				}
				name = sni
			}
			return m.Certificate(name)
		},
	}
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
