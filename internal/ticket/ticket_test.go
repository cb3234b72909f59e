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
	tk, err := a.Issue("sess-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := New([]byte("another secret that is long enough!!"))
	otherTk, _ := other.Issue("sess-1", time.Hour)
	sess2, _ := a.Issue("sess-2", time.Hour)
	flip := []byte(tk.Token)
	flip[len(flip)-2] ^= 1
	expTk := tk.Token
	// Tamper with the expiry: a later expiry must not verify.
	parts := strings.Split(tk.Token, ".")
	later := strings.Join([]string{parts[0], "1900000000", parts[2], parts[3]}, ".")

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
		{"other secret", "sess-1", otherTk.Token, now, ErrInvalid},
		{"empty", "sess-1", "", now, ErrMalformed},
		{"garbage", "sess-1", "hello", now, ErrMalformed},
		{"bad version", "sess-1", "v2" + tk.Token[2:], now, ErrMalformed},
		{"bad session", "a:b", tk.Token, now, ErrBadSession},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.Now = func() time.Time { return tt.at }
			exp, err := a.Verify(tt.session, tt.token)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if err == nil && !exp.Equal(tk.ExpiresAt) {
				t.Fatalf("expiry %v, want %v", exp, tk.ExpiresAt)
			}
		})
	}
}

func TestProof(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := newTestAuthority(t, now)
	tk, _ := a.Issue("s", time.Minute)
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
		{"malformed public", "s", "v1.x", nonce, proof, now, ErrMalformed},
		{"short proof", "s", pub, nonce, proof[:5], now, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.Now = func() time.Time { return tt.at }
			_, err := a.VerifyProof(tt.session, tt.public, tt.nonce, tt.proof)
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
	tests := []struct {
		name string
		file string
		env  string
		want error
	}{
		{"file", good, "", nil},
		{"short file", short, "", ErrSecret},
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
		if _, err := a.Issue(s, time.Hour); !errors.Is(err, ErrBadSession) {
			t.Errorf("Issue(%q) = %v, want ErrBadSession", s, err)
		}
	}
	if _, err := a.Issue("ok", 0); err == nil {
		t.Error("Issue with ttl 0 succeeded")
	}
}

func TestTicketJSON(t *testing.T) {
	a := newTestAuthority(t, time.Unix(1_800_000_000, 0))
	// Every field is always present: readers need not tell a missing broker_addr from an empty one.
	for _, broker := range []string{"127.0.0.1:7000", ""} {
		tk, _ := a.Issue("s1", time.Hour)
		tk.BrokerAddr = broker
		b, _ := json.Marshal(tk)
		var m map[string]any
		json.Unmarshal(b, &m)
		for _, k := range []string{"session_id", "token", "broker_addr", "expires_at"} {
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
	tk, _ := a.Issue("s", time.Hour)
	for _, s := range []string{tk.Token, "", "v1", "v1...", "v1.1.AAAAAAAA.", "v1.-1.x.y", "v1.01.AAAAAAAA." + strings.Repeat("A", 43), tk.Token + "."} {
		f.Add("s", s)
	}
	f.Fuzz(func(t *testing.T, session, token string) {
		exp, err := a.Verify(session, token)
		if err == nil {
			if session != "s" || token != tk.Token || !exp.Equal(tk.ExpiresAt) {
				t.Fatalf("Verify(%q, %q) accepted a token that was never issued", session, token)
			}
			return
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrWrongSession) && !errors.Is(err, ErrExpired) && !errors.Is(err, ErrBadSession) {
			t.Fatalf("Verify error %v has no known type", err)
		}
		if p, err := Parse(token); err == nil {
			if pub, err := Public(token); err != nil || !strings.HasPrefix(token, pub+".") || p.Expiry.IsZero() {
				t.Fatalf("Public(%q) = %q, %v", token, pub, err)
			}
		}
	})
}
