package ticket

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func newTestAuthority(t *testing.T, now time.Time) *Authority {
	t.Helper()
	a, err := New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	a.Now = func() time.Time { return now }
	return a
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := newTestAuthority(t, now)
	tk, err := a.Issue("sess-1", RoleWorker, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := New([]byte("another secret that is long enough!!"))
	otherTk, _ := other.Issue("sess-1", RoleWorker, time.Hour)
	sess2, _ := a.Issue("sess-2", RoleWorker, time.Hour)
	prov, _ := a.Issue("sess-1", RoleProvider, time.Hour)
	expTk := tk.Token
	// Tamper with the expiry, the role or the nonce: none may verify.
	parts := strings.Split(tk.Token, ".")
	if len(parts) != 6 || parts[0] != "v3" || len(parts[3]) != 11 || len(parts[5]) != 43 {
		t.Fatalf("token %q is not v3.<role>.<expiry>.<nonce>.<fingerprint>.<mac>", tk.Token)
	}
	with := func(i int, v string) string {
		f := append([]string(nil), parts...)
		f[i] = v
		return strings.Join(f, ".")
	}
	later := with(2, "1900000000")
	promoted := with(1, "p")
	renonced := with(3, "AAAAAAAAAAA")
	// The MAC's last character carries 2 bits of padding: other spellings of the same bytes are
	// malformed, not another token with an id of its own.
	// sibling returns the base64url character whose 6-bit value differs from c's in the lowest bit:
	// flipping a character's ASCII code instead can leave the alphabet (z becomes {), and the nonce
	// makes every token's characters random.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	sibling := func(c byte) string { return string(alphabet[strings.IndexByte(alphabet, c)^1]) }
	tamperedMAC := with(5, parts[5][:41]+sibling(parts[5][41])+parts[5][42:])
	respelled := with(5, parts[5][:42]+sibling(parts[5][42]))
	v2 := (Parsed{Role: RoleWorker, version: "v2", expiry: parts[2], fingerprint: parts[4]})
	v2Token := a.token("sess-1", v2)
	revoked := &Revocations{}

	tests := []struct {
		name    string
		session string
		token   string
		at      time.Time
		want    error
	}{
		{"valid", "sess-1", tk.Token, now, nil},
		{"valid until the last second", "sess-1", tk.Token, now.Add(time.Hour - time.Second), nil},
		{"expired", "sess-1", expTk, now.Add(time.Hour), ErrExpired},
		{"other session", "sess-1", sess2.Token, now, ErrWrongSession},
		{"tampered mac", "sess-1", tamperedMAC, now, ErrInvalid},
		{"tampered expiry", "sess-1", later, now, ErrInvalid},
		{"tampered nonce", "sess-1", renonced, now, ErrInvalid},
		{"MAC spelled another way", "sess-1", respelled, now, ErrMalformed},
		{"version 2 token, still accepted", "sess-1", v2Token, now, nil},
		{"version 2 token with a nonce", "sess-1", "v2" + tk.Token[2:], now, ErrMalformed},
		{"worker token relabelled provider", "sess-1", promoted, now, ErrInvalid},
		{"provider token as worker credentials", "sess-1", prov.Token, now, ErrWrongRole},
		{"revoked session", "sess-r", "", now, ErrRevoked},
		{"other secret", "sess-1", otherTk.Token, now, ErrInvalid},
		{"empty", "sess-1", "", now, ErrMalformed},
		{"garbage", "sess-1", "hello", now, ErrMalformed},
		{"bad version", "sess-1", "v4" + tk.Token[2:], now, ErrMalformed},
		{"version 1 token", "sess-1", "v1.1800003600.AAAAAAAA." + parts[5], now, ErrMalformed},
		{"bad session", "a:b", tk.Token, now, ErrBadSession},
	}
	revFile := filepath.Join(t.TempDir(), "revoked")
	os.WriteFile(revFile, []byte("# revoked\nsess-r\n"), 0o600)
	if err := revoked.Load(revFile); err != nil || revoked.Len() != 1 {
		t.Fatalf("Load = %v, %d entries", err, revoked.Len())
	}
	a.Revoked = revoked.Revoked
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.Now = func() time.Time { return tt.at }
			if tt.token == "" && tt.want == ErrRevoked {
				r, _ := a.Issue(tt.session, RoleWorker, time.Hour)
				tt.token = r.Token
			}
			exp, err := a.Verify(tt.session, tt.token, RoleWorker)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if err == nil && !exp.Equal(tk.ExpiresAt) {
				t.Fatalf("expiry %v, want %v", exp, tk.ExpiresAt)
			}
			if err != nil && (strings.Contains(err.Error(), parts[5]) || strings.Contains(err.Error(), tt.session)) {
				t.Fatalf("error %q repeats the MAC or the session id", err)
			}
		})
	}
}

// TestTicketsIssuedTogether: tickets of one session and role issued in the same second are tokens of
// their own, so one of them can be revoked by its id and the others keep working.
func TestTicketsIssuedTogether(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := newTestAuthority(t, now)
	var tks []Ticket
	ids := map[string]bool{}
	for range 3 {
		tk, err := a.Issue("fleet", RoleWorker, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if ids[tk.TokenID] {
			t.Fatalf("token id %s issued twice", tk.TokenID)
		}
		ids[tk.TokenID] = true
		tks = append(tks, tk)
	}
	a.Revoked = func(_, id string) bool { return id == tks[0].TokenID }
	if _, err := a.Verify("fleet", tks[0].Token, RoleWorker); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked ticket: %v", err)
	}
	for _, tk := range tks[1:] {
		if _, err := a.Verify("fleet", tk.Token, RoleWorker); err != nil {
			t.Fatalf("ticket issued with the revoked one: %v", err)
		}
	}
	// The same for a provider's handshake, where the broker rebuilds the token from its public part.
	p1, _ := a.Issue("fleet", RoleProvider, time.Hour)
	p2, _ := a.Issue("fleet", RoleProvider, time.Hour)
	a.Revoked = func(_, id string) bool { return id == p1.TokenID }
	for _, c := range []struct {
		tk   Ticket
		want error
	}{{p1, ErrRevoked}, {p2, nil}} {
		pub, _ := Public(c.tk.Token)
		_, id, err := a.VerifyProof("fleet", pub, []byte("n"), Proof(c.tk.Token, []byte("n")), RoleProvider)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) || (err == nil && id != c.tk.TokenID) {
			t.Fatalf("VerifyProof = %q, %v; want id %q, %v", id, err, c.tk.TokenID, c.want)
		}
	}
}

// TestTokenAsSessionID: a token sent as the user name (--proxy-user "$TOKEN_A:$TOKEN_B") is neither
// quoted in the error nor accepted.
func TestTokenAsSessionID(t *testing.T) {
	a := newTestAuthority(t, time.Unix(1_800_000_000, 0))
	ta, _ := a.Issue("sess-a", RoleWorker, time.Hour)
	tb, _ := a.Issue("sess-b", RoleWorker, time.Hour)
	_, err := a.Verify(ta.Token, tb.Token, RoleWorker)
	if err == nil || !LooksLikeToken(ta.Token) || LooksLikeToken("sess-a") {
		t.Fatalf("Verify(token, token) = %v", err)
	}
	for _, tok := range []Ticket{ta, tb} {
		mac := tok.Token[strings.LastIndexByte(tok.Token, '.')+1:]
		if strings.Contains(err.Error(), mac[:8]) {
			t.Fatalf("error %q contains a MAC", err)
		}
	}
}

// TestRevocationsTokenLine: a whole token pasted into the list revokes that token (its id), and not
// the other tickets of its session.
func TestRevocationsTokenLine(t *testing.T) {
	a := newTestAuthority(t, time.Unix(1_800_000_000, 0))
	leaked, _ := a.Issue("fleet", RoleWorker, time.Hour)
	other, _ := a.Issue("fleet", RoleWorker, time.Hour)
	f := filepath.Join(t.TempDir(), "revoked")
	os.WriteFile(f, []byte(leaked.Token+"  # leaked in a build log\r\n"), 0o600)
	var r Revocations
	if err := r.Load(f); err != nil {
		t.Fatal(err)
	}
	a.Revoked = r.Revoked
	if _, err := a.Verify("fleet", leaked.Token, RoleWorker); !errors.Is(err, ErrRevoked) {
		t.Errorf("pasted token: %v, want revoked", err)
	}
	if _, err := a.Verify("fleet", other.Token, RoleWorker); err != nil {
		t.Errorf("another ticket of the session: %v", err)
	}
}

func TestRevocationsLoad(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("ok\nnot valid\n"), 0o600)
	var r Revocations
	if err := r.Load(bad); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("Load(bad) = %v, want an error naming line 2", err)
	}
	if r.Revoked("ok", "") {
		t.Fatal("a list that failed to load is in force")
	}
}

func TestProof(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := newTestAuthority(t, now)
	tk, _ := a.Issue("s", RoleProvider, time.Minute)
	pub, err := Public(tk.Token)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(tk.Token[len(pub):], ".") == false || strings.HasPrefix(pub, tk.Token) {
		t.Fatalf("public part %q leaks or misses the MAC of %q", pub, tk.Token)
	}
	nonce := []byte("nonce-1")
	proof := Proof(tk.Token, nonce)
	tests := []struct {
		name    string
		session string
		public  string
		nonce   []byte
		proof   []byte
		at      time.Time
		want    error
	}{
		{"valid", "s", pub, nonce, proof, now, nil},
		{"replayed for another nonce", "s", pub, []byte("nonce-2"), proof, now, ErrInvalid},
		{"other session", "t", pub, nonce, proof, now, ErrWrongSession},
		{"expired", "s", pub, nonce, proof, now.Add(time.Minute), ErrExpired},
		{"malformed public", "s", "v2.x", nonce, proof, now, ErrMalformed},
		{"public part of another ticket", "s", pub[:len(pub)-len("AAAAAAAAAAA.")-8] + "AAAAAAAAAAA" + pub[len(pub)-9:], nonce, proof, now, ErrInvalid},
		{"short proof", "s", pub, nonce, proof[:5], now, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.Now = func() time.Time { return tt.at }
			_, id, err := a.VerifyProof(tt.session, tt.public, tt.nonce, tt.proof, RoleProvider)
			if err == nil && id != tk.TokenID {
				t.Fatalf("token id %q, want %q", id, tk.TokenID)
			}
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("VerifyProof = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewAndLoadSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, append(bytes.Repeat([]byte("k"), 32), '\n'), 0o600)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("short\n"), 0o600)
	open := filepath.Join(dir, "open")
	os.WriteFile(open, append(bytes.Repeat([]byte("k"), 32), '\n'), 0o644)
	os.Chmod(open, 0o644)
	tests := []struct {
		name string
		file string
		env  string
		want error
	}{
		{"file", good, "", nil},
		{"short file", short, "", ErrSecret},
		{"file others can read", open, "", ErrSecret},
		{"missing file", filepath.Join(dir, "none"), "", os.ErrNotExist},
		{"env", "", strings.Repeat("e", 40), nil},
		{"short env", "", "abc", ErrSecret},
		{"nothing", "", "", ErrSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvSecret, tt.env)
			s, err := LoadSecret(tt.file)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("LoadSecret = %v, want %v", err, tt.want)
			}
			if err == nil {
				if _, err := New(s); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if _, err := New([]byte("short")); !errors.Is(err, ErrSecret) {
		t.Fatalf("New(short) = %v, want ErrSecret", err)
	}
}

func TestIssueRejects(t *testing.T) {
	a := newTestAuthority(t, time.Now())
	for _, s := range []string{"", "a b", "a:b", "a|b", strings.Repeat("x", MaxSessionLen+1)} {
		if _, err := a.Issue(s, RoleWorker, time.Hour); !errors.Is(err, ErrBadSession) {
			t.Errorf("Issue(%q) = %v, want ErrBadSession", s, err)
		}
	}
	if _, err := a.Issue("ok", RoleWorker, 0); err == nil {
		t.Error("Issue with ttl 0 succeeded")
	}
	if _, err := a.Issue("ok", "admin", time.Hour); err == nil {
		t.Error("Issue with role admin succeeded")
	}
}

func TestTicketJSON(t *testing.T) {
	a := newTestAuthority(t, time.Unix(1_800_000_000, 0))
	// Every field is always present: readers need not tell a missing broker_addr from an empty one.
	for _, broker := range []string{"127.0.0.1:7000", ""} {
		tk, _ := a.Issue("s1", RoleWorker, time.Hour)
		tk.BrokerAddr = broker
		b, _ := json.Marshal(tk)
		var m map[string]any
		json.Unmarshal(b, &m)
		for _, k := range []string{"session_id", "role", "token", "token_id", "broker_addr", "expires_at"} {
			if _, ok := m[k]; !ok {
				t.Errorf("ticket JSON %s lacks %q", b, k)
			}
		}
		if m["broker_addr"] != broker || m["expires_at"] != "2027-01-15T09:00:00Z" {
			t.Errorf("ticket JSON %s: want broker_addr %q and expires_at 2027-01-15T09:00:00Z", b, broker)
		}
	}
}

func FuzzVerify(f *testing.F) {
	a, _ := New(testSecret)
	a.Now = func() time.Time { return time.Unix(1_800_000_000, 0) }
	// A fixed nonce: the fuzzing workers run this setup again, and must know the same token.
	tk := Ticket{ExpiresAt: time.Unix(1_800_003_600, 0).UTC()}
	tk.Token = a.token("s", Parsed{Role: RoleWorker, version: tokenVersion, expiry: "1800003600", nonce: "AAAAAAAAAAA", fingerprint: fingerprint("s")})
	for _, s := range []string{tk.Token, "", "v2", "v2....", "v2.w.1.AAAAAAAA.", "v2.x.-1.x.y", "v2.w.01.AAAAAAAA." + strings.Repeat("A", 43), tk.Token + ".",
		"v3.w.1.AAAAAAAAAAA.AAAAAAAA." + strings.Repeat("A", 43), "v3.w.1.AAAAAAAAAAB.AAAAAAAA." + strings.Repeat("A", 43)} {
		f.Add("s", s)
	}
	f.Fuzz(func(t *testing.T, session, token string) {
		exp, err := a.Verify(session, token, RoleWorker)
		if err == nil {
			if session != "s" || token != tk.Token || !exp.Equal(tk.ExpiresAt) {
				t.Fatalf("Verify(%q, %q) accepted a token that was never issued", session, token)
			}
			return
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrWrongSession) && !errors.Is(err, ErrExpired) && !errors.Is(err, ErrBadSession) && !errors.Is(err, ErrWrongRole) {
			t.Fatalf("Verify error %v has no known type", err)
		}
		if p, err := Parse(token); err == nil {
			if pub, err := Public(token); err != nil || !strings.HasPrefix(token, pub+".") || p.Expiry.IsZero() {
				t.Fatalf("Public(%q) = %q, %v", token, pub, err)
			}
		}
	})
}
