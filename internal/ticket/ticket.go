// Package ticket issues and verifies session tickets without a database. A token is an HMAC-SHA256,
// made with the broker's secret, over the role, the session id, the expiry and a random nonce; the
// role, the expiry, the nonce and a fingerprint of the session travel in the token, so the broker
// recomputes the MAC from its secret alone and compares in constant time.
//
// A token looks like "v3.<role>.<expiry-unix>.<nonce>.<session-fingerprint>.<mac>", role "w" (worker:
// proxy credentials) or "p" (provider: tunnel login); everything before the last dot is public (see
// Public) and the MAC is the secret part. The nonce makes every ticket a token of its own, so that
// one of several tickets issued together can be revoked. Version 2 tokens (the same without the
// nonce) are still accepted until they expire, and no longer issued. Only the canonical base64url
// spelling of a field parses, so one token has one token id.
//
// No error of this package contains a token, a MAC or a session id a client sent: a client may send
// a token where a session id belongs.
package ticket

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"runtime"
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

// Token versions: the first field of a token and the prefix of its MAC input. Issue makes
// tokenVersion; tokenV2 (no nonce) is still verified.
const (
	tokenVersion = "v3"
	tokenV2      = "v2"
)

// nonceLen is how many random bytes a token's nonce holds.
const nonceLen = 8

// Role is what a ticket lets its holder do.
type Role string

// Roles. A worker ticket is proxy credentials; a provider ticket logs a provider in to the broker.
// Neither works as the other.
const (
	RoleWorker   Role = "worker"
	RoleProvider Role = "provider"
)

// ParseRole checks a role name as given to `ticket --role`.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleWorker, RoleProvider:
		return r, nil
	}
	return "", fmt.Errorf("role %q: want worker or provider", s)
}

// code is the role's field in a token.
func (r Role) code() string {
	if r == RoleProvider {
		return "p"
	}
	return "w"
}

func roleOf(code string) (Role, bool) {
	switch code {
	case "w":
		return RoleWorker, true
	case "p":
		return RoleProvider, true
	}
	return "", false
}

// Errors returned (wrapped) by Verify and the helpers; match them with errors.Is.
var (
	// ErrMalformed: the token is not of the form v3.<role>.<expiry>.<nonce>.<fingerprint>.<mac> (or a
	// version 2 token, which has no nonce).
	ErrMalformed = errors.New("malformed token")
	// ErrWrongSession: the token was issued for another session.
	ErrWrongSession = errors.New("token was issued for another session")
	// ErrWrongRole: the token is genuine but of the other role (a worker ticket used by a provider,
	// or the reverse).
	ErrWrongRole = errors.New("token is for another role")
	// ErrInvalid: the MAC does not match (tampered, forged, or issued with another secret).
	ErrInvalid = errors.New("token is not valid")
	// ErrExpired: the token is genuine but its expiry has passed.
	ErrExpired = errors.New("token has expired")
	// ErrRevoked: the token or its session is on the broker's revocation list.
	ErrRevoked = errors.New("token is revoked")
	// ErrBadSession: the session id is empty, too long or has characters outside [A-Za-z0-9._-].
	ErrBadSession = errors.New("invalid session id")
	// ErrSecret: the secret is missing, shorter than MinSecretLen, or in a file others can read.
	ErrSecret = errors.New("unusable secret")
)

// Ticket is what `swarm-proxy ticket --json` prints and what a provider reads with --ticket.
type Ticket struct {
	SessionID string `json:"session_id"`
	Role      Role   `json:"role"`
	Token     string `json:"token"`
	// TokenID names the token on a revocation list (broker --revoked); it is not secret.
	TokenID    string    `json:"token_id"`
	BrokerAddr string    `json:"broker_addr"` // "" when the issuer did not give it
	ExpiresAt  time.Time `json:"expires_at"`
	// BrokerFingerprint pins the broker's provider-port certificate, "sha256:<hex>"; set when the
	// issuer gave the broker's certificate.
	BrokerFingerprint string `json:"broker_fingerprint,omitempty"`
}

// Authority issues and verifies tokens with one secret.
type Authority struct {
	secret []byte
	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time
	// Revoked, when set, is asked about every token that is otherwise valid.
	Revoked func(session, tokenID string) bool
}

// New returns an Authority for secret, which must be at least MinSecretLen bytes.
func New(secret []byte) (*Authority, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("ticket: %w: it is %d bytes, at least %d are required (create one with: head -c 32 /dev/urandom | base64 > secret)", ErrSecret, len(secret), MinSecretLen)
	}
	return &Authority{secret: append([]byte(nil), secret...)}, nil
}

// LoadSecret reads the secret from file, or from the SWARM_PROXY_SECRET environment variable when
// file is empty. Surrounding white space (a trailing newline) is removed. A file that its group or
// others may read is refused (except on Windows, which has no such mode bits).
func LoadSecret(file string) ([]byte, error) {
	var raw []byte
	var from string
	if file != "" {
		fi, err := os.Stat(file)
		if err != nil {
			return nil, fmt.Errorf("load secret: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
			return nil, fmt.Errorf("load secret: %w: %s has mode %04o, readable by group or others; fix: chmod 600 %s", ErrSecret, file, perm, file)
		}
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
// The error does not repeat id: it may be a secret sent in the wrong place.
func ValidSession(id string) error {
	if id == "" || len(id) > MaxSessionLen {
		return fmt.Errorf("%w: want 1 to %d characters, got %d", ErrBadSession, MaxSessionLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: character %d is not one of A-Z a-z 0-9 . _ -", ErrBadSession, i+1)
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

// Issue returns a ticket of role for session, valid for ttl.
func (a *Authority) Issue(session string, role Role, ttl time.Duration) (Ticket, error) {
	if err := ValidSession(session); err != nil {
		return Ticket{}, fmt.Errorf("issue ticket: %w", err)
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Ticket{}, fmt.Errorf("issue ticket: %w", err)
	}
	if ttl <= 0 {
		return Ticket{}, fmt.Errorf("issue ticket: ttl %v must be positive", ttl)
	}
	exp := a.now().Add(ttl).Truncate(time.Second)
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return Ticket{}, fmt.Errorf("issue ticket: nonce: %w", err)
	}
	p := Parsed{Role: role, Expiry: exp.UTC(), version: tokenVersion, expiry: strconv.FormatInt(exp.Unix(), 10),
		nonce: b64(nonce), fingerprint: fingerprint(session)}
	tok := a.token(session, p)
	return Ticket{SessionID: session, Role: role, Token: tok, TokenID: TokenID(tok), ExpiresAt: p.Expiry}, nil
}

// token returns the genuine token for session with p's public fields.
func (a *Authority) token(session string, p Parsed) string {
	return p.public() + "." + b64(a.mac(session, p))
}

func (a *Authority) mac(session string, p Parsed) []byte {
	in := p.version + "|" + p.Role.code() + "|" + session + "|" + p.expiry
	if p.version != tokenV2 {
		in += "|" + p.nonce
	}
	m := hmac.New(sha256.New, a.secret)
	m.Write([]byte(in))
	return m.Sum(nil)
}

// TokenID names a token without revealing it: base64url of the first 9 bytes of its SHA-256.
func TokenID(token string) string {
	h := sha256.Sum256([]byte(token))
	return b64(h[:9])
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
	Role        Role
	Expiry      time.Time
	version     string
	expiry      string
	nonce       string // "" in a version 2 token
	fingerprint string
	mac         []byte
}

// public returns the token's public part from its fields.
func (p Parsed) public() string {
	f := []string{p.version, p.Role.code(), p.expiry}
	if p.version != tokenV2 {
		f = append(f, p.nonce)
	}
	return strings.Join(append(f, p.fingerprint), ".")
}

// Parse splits a token into its fields without checking the MAC. Its errors never quote the token.
func Parse(token string) (Parsed, error) {
	if len(token) > 256 {
		return Parsed{}, fmt.Errorf("%w: longer than 256 bytes", ErrMalformed)
	}
	f := strings.Split(token, ".")
	if len(f) == 4 && f[0] == "v1" {
		return Parsed{}, fmt.Errorf("%w: a version 1 token has no role; issue a new ticket (swarm-proxy ticket --role worker|provider)", ErrMalformed)
	}
	var nonce string
	switch {
	case len(f) == 6 && f[0] == tokenVersion:
		nonce = f[3]
		if b, err := base64.RawURLEncoding.DecodeString(nonce); err != nil || len(b) != nonceLen || b64(b) != nonce {
			return Parsed{}, fmt.Errorf("%w: the nonce is not %d bytes of base64url", ErrMalformed, nonceLen)
		}
		f = append(f[:3], f[4:]...)
	case len(f) == 5 && f[0] == tokenV2:
	default:
		return Parsed{}, fmt.Errorf("%w: want v3.<role>.<expiry>.<nonce>.<fingerprint>.<mac>", ErrMalformed)
	}
	role, ok := roleOf(f[1])
	if !ok {
		return Parsed{}, fmt.Errorf("%w: the role field is not w or p", ErrMalformed)
	}
	exp, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || exp <= 0 || strconv.FormatInt(exp, 10) != f[2] {
		return Parsed{}, fmt.Errorf("%w: the expiry field is not a unix time", ErrMalformed)
	}
	if len(f[3]) != 8 {
		return Parsed{}, fmt.Errorf("%w: the session fingerprint is not 8 characters", ErrMalformed)
	}
	// The encoding must be the canonical one: a lenient decoder ignores the last character's low
	// bits, and four spellings of one MAC would be four token ids, three of them not on a revocation
	// list that names the fourth.
	mac, err := base64.RawURLEncoding.DecodeString(f[4])
	if err != nil || len(mac) != sha256.Size || b64(mac) != f[4] {
		return Parsed{}, fmt.Errorf("%w: the MAC is not %d bytes of base64url", ErrMalformed, sha256.Size)
	}
	return Parsed{Role: role, Expiry: time.Unix(exp, 0).UTC(), version: f[0], expiry: f[2], nonce: nonce,
		fingerprint: f[3], mac: mac}, nil
}

// LooksLikeToken reports whether s parses as a token: a client that sends one as its session id has
// put the credentials in the wrong order or sent two tokens.
func LooksLikeToken(s string) bool {
	_, err := Parse(s)
	return err == nil
}

// Verify checks that token is a genuine, unexpired, unrevoked token of session with role, and
// returns its expiry. The MAC is compared in constant time.
func (a *Authority) Verify(session, token string, role Role) (time.Time, error) {
	if err := ValidSession(session); err != nil {
		return time.Time{}, fmt.Errorf("verify token: %w", err)
	}
	p, err := Parse(token)
	if err != nil {
		return time.Time{}, fmt.Errorf("verify token: %w", err)
	}
	return a.check(session, p, role, token, hmac.Equal(p.mac, a.mac(session, p)))
}

// check runs the checks common to Verify and VerifyProof once the MAC or proof has been compared.
func (a *Authority) check(session string, p Parsed, role Role, token string, macOK bool) (time.Time, error) {
	if p.fingerprint != fingerprint(session) {
		return time.Time{}, fmt.Errorf("verify token: %w", ErrWrongSession)
	}
	if !macOK {
		return time.Time{}, fmt.Errorf("verify token: %w (tampered, or issued with another secret)", ErrInvalid)
	}
	if p.Role != role {
		return time.Time{}, fmt.Errorf("verify token: %w: this is a %s ticket and a %s ticket is needed here (swarm-proxy ticket --role %s)", ErrWrongRole, p.Role, role, role)
	}
	if !a.now().Before(p.Expiry) {
		return time.Time{}, fmt.Errorf("verify token: %w: it expired at %s", ErrExpired, p.Expiry.Format(time.RFC3339))
	}
	if a.Revoked != nil && a.Revoked(session, TokenID(token)) {
		return time.Time{}, fmt.Errorf("verify token: %w (the broker's --revoked list names the session or the token id)", ErrRevoked)
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
// challenge, role the role the token must have. It recomputes the token from the secret, so a recorded
// proof is useless for another challenge. It returns the token's expiry and id.
func (a *Authority) VerifyProof(session, public string, challenge, proof []byte, role Role) (time.Time, string, error) {
	if err := ValidSession(session); err != nil {
		return time.Time{}, "", fmt.Errorf("verify proof: %w", err)
	}
	p, err := Parse(public + "." + b64(make([]byte, sha256.Size)))
	if err != nil {
		return time.Time{}, "", fmt.Errorf("verify proof: %w", err)
	}
	token := a.token(session, p)
	exp, err := a.check(session, p, role, token, hmac.Equal(proof, Proof(token, challenge)))
	if err != nil {
		return time.Time{}, "", err
	}
	return exp, TokenID(token), nil
}
