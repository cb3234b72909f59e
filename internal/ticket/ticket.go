// Package ticket issues and verifies session tickets without a database. A token is an HMAC-SHA256,
// made with the broker's secret, over the session id and the expiry; the expiry and a fingerprint of
// the session travel in the token, so the broker recomputes the MAC from its secret alone and compares
// in constant time.
//
// A token looks like "v1.<expiry-unix>.<session-fingerprint>.<mac>"; everything before the last dot is
// public (see Public) and the MAC is the secret part.
package ticket

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// MinSecretLen is the shortest secret accepted, in bytes.
const MinSecretLen = 32

// MaxSessionLen bounds session ids.
const MaxSessionLen = 128

// EnvSecret is the environment variable that holds the secret when no secret file is given.
const EnvSecret = "SWARM_PROXY_SECRET"

// tokenVersion is the first field of every token and the prefix of the MAC input.
const tokenVersion = "v1"

// Errors returned (wrapped) by Verify and the helpers; match them with errors.Is.
var (
	// ErrMalformed: the token is not of the form v1.<expiry>.<fingerprint>.<mac>.
	ErrMalformed = errors.New("malformed token")
	// ErrWrongSession: the token was issued for another session.
	ErrWrongSession = errors.New("token was issued for another session")
	// ErrInvalid: the MAC does not match (tampered, forged, or issued with another secret).
	ErrInvalid = errors.New("token is not valid")
	// ErrExpired: the token is genuine but its expiry has passed.
	ErrExpired = errors.New("token has expired")
	// ErrBadSession: the session id is empty, too long or has characters outside [A-Za-z0-9._-].
	ErrBadSession = errors.New("invalid session id")
	// ErrSecret: the secret is missing or shorter than MinSecretLen.
	ErrSecret = errors.New("unusable secret")
)

// Ticket is what `swarm-proxy ticket --json` prints and what a provider reads with --ticket.
type Ticket struct {
	SessionID  string    `json:"session_id"`
	Token      string    `json:"token"`
	BrokerAddr string    `json:"broker_addr"` // "" when the issuer did not give it
	ExpiresAt  time.Time `json:"expires_at"`
}

// Authority issues and verifies tokens with one secret.
type Authority struct {
	secret []byte
	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time
}

// New returns an Authority for secret, which must be at least MinSecretLen bytes.
func New(secret []byte) (*Authority, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("ticket: %w: it is %d bytes, at least %d are required (create one with: head -c 32 /dev/urandom | base64 > secret)", ErrSecret, len(secret), MinSecretLen)
	}
	return &Authority{secret: append([]byte(nil), secret...)}, nil
}

// LoadSecret reads the secret from file, or from the SWARM_PROXY_SECRET environment variable when
// file is empty. Surrounding white space (a trailing newline) is removed.
func LoadSecret(file string) ([]byte, error) {
	var raw []byte
	var from string
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("load secret: %w", err)
		}
		raw, from = b, file
	} else {
		v, ok := os.LookupEnv(EnvSecret)
		if !ok || v == "" {
			return nil, fmt.Errorf("load secret: %w: give --secret-file FILE or set %s", ErrSecret, EnvSecret)
		}
		raw, from = []byte(v), EnvSecret
	}
	s := []byte(strings.TrimSpace(string(raw)))
	if len(s) < MinSecretLen {
		return nil, fmt.Errorf("load secret from %s: %w: it is %d bytes, at least %d are required (create one with: head -c 32 /dev/urandom | base64 > secret)", from, ErrSecret, len(s), MinSecretLen)
	}
	return s, nil
}

// ValidSession reports whether id can be a session id: 1 to MaxSessionLen characters of
// [A-Za-z0-9._-]. The restriction keeps ids safe in Basic credentials, the tunnel handshake and logs.
func ValidSession(id string) error {
	if id == "" || len(id) > MaxSessionLen {
		return fmt.Errorf("%w %q: want 1 to %d characters", ErrBadSession, truncate(id), MaxSessionLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w %q: character %q not allowed (use A-Z a-z 0-9 . _ -)", ErrBadSession, truncate(id), c)
		}
	}
	return nil
}

func (a *Authority) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Issue returns a ticket for session valid for ttl.
func (a *Authority) Issue(session string, ttl time.Duration) (Ticket, error) {
	if err := ValidSession(session); err != nil {
		return Ticket{}, fmt.Errorf("issue ticket: %w", err)
	}
	if ttl <= 0 {
		return Ticket{}, fmt.Errorf("issue ticket: ttl %v must be positive", ttl)
	}
	exp := a.now().Add(ttl).Truncate(time.Second)
	return Ticket{SessionID: session, Token: a.token(session, exp.Unix()), ExpiresAt: exp.UTC()}, nil
}

func (a *Authority) token(session string, exp int64) string {
	e := strconv.FormatInt(exp, 10)
	return tokenVersion + "." + e + "." + fingerprint(session) + "." + b64(a.mac(session, e))
}

func (a *Authority) mac(session, exp string) []byte {
	m := hmac.New(sha256.New, a.secret)
	m.Write([]byte(tokenVersion + "|" + session + "|" + exp))
	return m.Sum(nil)
}

// fingerprint names the session a token belongs to, so that a token of another session gets its own
// error. It is public: session ids travel in the clear anyway.
func fingerprint(session string) string {
	h := sha256.Sum256([]byte(session))
	return b64(h[:6])
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// Parsed is a token split into its fields.
type Parsed struct {
	Expiry      time.Time
	expiry      string
	fingerprint string
	mac         []byte
}

// Parse splits a token into its fields without checking the MAC.
func Parse(token string) (Parsed, error) {
	if len(token) > 256 {
		return Parsed{}, fmt.Errorf("%w: longer than 256 bytes", ErrMalformed)
	}
	f := strings.Split(token, ".")
	if len(f) != 4 {
		return Parsed{}, fmt.Errorf("%w: want v1.<expiry>.<fingerprint>.<mac>", ErrMalformed)
	}
	if f[0] != tokenVersion {
		return Parsed{}, fmt.Errorf("%w: version %q, want %s", ErrMalformed, truncate(f[0]), tokenVersion)
	}
	exp, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || exp <= 0 || strconv.FormatInt(exp, 10) != f[1] {
		return Parsed{}, fmt.Errorf("%w: expiry %q is not a unix time", ErrMalformed, truncate(f[1]))
	}
	mac, err := base64.RawURLEncoding.DecodeString(f[3])
	if err != nil || len(mac) != sha256.Size {
		return Parsed{}, fmt.Errorf("%w: the MAC is not %d bytes of base64url", ErrMalformed, sha256.Size)
	}
	if len(f[2]) != 8 {
		return Parsed{}, fmt.Errorf("%w: the session fingerprint is not 8 characters", ErrMalformed)
	}
	return Parsed{Expiry: time.Unix(exp, 0).UTC(), expiry: f[1], fingerprint: f[2], mac: mac}, nil
}

// Verify checks that token is a genuine, unexpired token of session and returns its expiry.
// The MAC is compared in constant time.
func (a *Authority) Verify(session, token string) (time.Time, error) {
	if err := ValidSession(session); err != nil {
		return time.Time{}, fmt.Errorf("verify token: %w", err)
	}
	p, err := Parse(token)
	if err != nil {
		return time.Time{}, fmt.Errorf("verify token: %w", err)
	}
	if p.fingerprint != fingerprint(session) {
		return time.Time{}, fmt.Errorf("verify token: %w (session %s)", ErrWrongSession, session)
	}
	if !hmac.Equal(p.mac, a.mac(session, p.expiry)) {
		return time.Time{}, fmt.Errorf("verify token: %w for session %s (tampered, or issued with another secret)", ErrInvalid, session)
	}
	if !a.now().Before(p.Expiry) {
		return time.Time{}, fmt.Errorf("verify token: %w: session %s expired at %s", ErrExpired, session, p.Expiry.Format(time.RFC3339))
	}
	return p.Expiry, nil
}

// Public returns the public part of a token (everything but the MAC), which a provider sends in the
// tunnel handshake instead of the token itself.
func Public(token string) (string, error) {
	if _, err := Parse(token); err != nil {
		return "", err
	}
	return token[:strings.LastIndexByte(token, '.')], nil
}

// Proof is the tunnel handshake's proof of possession: HMAC-SHA256 keyed with the token over the
// given challenge. It shows the provider holds the token without sending it.
func Proof(token string, challenge []byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write(challenge)
	return m.Sum(nil)
}

// VerifyProof checks a handshake: public is the token's public part, proof the provider's Proof over
// challenge. It recomputes the token from the secret, so a recorded proof is useless for another
// challenge. It returns the token's expiry.
func (a *Authority) VerifyProof(session, public string, challenge, proof []byte) (time.Time, error) {
	if err := ValidSession(session); err != nil {
		return time.Time{}, fmt.Errorf("verify proof: %w", err)
	}
	p, err := Parse(public + "." + b64(make([]byte, sha256.Size)))
	if err != nil {
		return time.Time{}, fmt.Errorf("verify proof: %w", err)
	}
	if p.fingerprint != fingerprint(session) {
		return time.Time{}, fmt.Errorf("verify proof: %w (session %s)", ErrWrongSession, session)
	}
	want := Proof(a.token(session, p.Expiry.Unix()), challenge)
	if !hmac.Equal(proof, want) {
		return time.Time{}, fmt.Errorf("verify proof: %w for session %s (wrong token, or issued with another secret)", ErrInvalid, session)
	}
	if !a.now().Before(p.Expiry) {
		return time.Time{}, fmt.Errorf("verify proof: %w: session %s expired at %s", ErrExpired, session, p.Expiry.Format(time.RFC3339))
	}
	return p.Expiry, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
