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
	flip := []byte(tk.Token)
	flip[len(flip)-2] ^= 1
	expTk := tk.Token
	// Tamper with the expiry or the role: neither may verify.
	parts := strings.Split(tk.Token, ".")
	later := strings.Join([]string{parts[0], parts[1], "1900000000", parts[3], parts[4]}, ".")
	promoted := strings.Join([]string{parts[0], "p", parts[2], parts[3], parts[4]}, ".")
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
		{"tampered mac", "sess-1", string(flip), now, ErrInvalid},
		{"tampered expiry", "sess-1", later, now, ErrInvalid},
		{"worker token relabelled provider", "sess-1", promoted, now, ErrInvalid},
		{"provider token as worker credentials", "sess-1", prov.Token, now, ErrWrongRole},
		{"revoked session", "sess-r", "", now, ErrRevoked},
		{"other secret", "sess-1", otherTk.Token, now, ErrInvalid},
		{"empty", "sess-1", "", now, ErrMalformed},
		{"garbage", "sess-1", "hello", now, ErrMalformed},
		{"bad version", "sess-1", "v3" + tk.Token[2:], now, ErrMalformed},
		{"version 1 token", "sess-1", "v1.1800003600.AAAAAAAA." + parts[4], now, ErrMalformed},
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
			if err != nil && (strings.Contains(err.Error(), parts[4]) || strings.Contains(err.Error(), tt.session)) {
				t.Fatalf("error %q repeats the MAC or the session id", err)
			}
		})
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
	tk, _ := a.Issue("s", RoleWorker, time.Hour)
	for _, s := range []string{tk.Token, "", "v2", "v2....", "v2.w.1.AAAAAAAA.", "v2.x.-1.x.y", "v2.w.01.AAAAAAAA." + strings.Repeat("A", 43), tk.Token + "."} {
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
