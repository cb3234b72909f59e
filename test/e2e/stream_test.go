package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// TestBodiesStreamBothWays uploads and downloads 32 MiB through plain-HTTP forwarding and compares
// checksums, and checks that the log counts the bytes.
func TestBodiesStreamBothWays(t *testing.T) {
	const size = 32 << 20
	payload := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(payload)
	sum := sha256.Sum256(payload)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			h := sha256.New()
			io.Copy(h, r.Body)
			io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
			return
		}
		w.Write(payload)
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(file, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv))))

	up := Curl(t, "-f", "-x", "http://"+p.Addr, "-T", file, srv.URL+"/upload")
	if up.Code != 0 || up.Stdout != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload: %+v", up)
	}
	down := Run(t, nil, "sh", "-c", "curl -sSf -x http://"+p.Addr+" "+srv.URL+"/download | sha256sum")
	if down.Code != 0 || !strings.HasPrefix(down.Stdout, hex.EncodeToString(sum[:])) {
		t.Fatalf("download: %+v", down)
	}
	put := p.WaitRecord(func(r accesslog.Record) bool { return r.Method == "PUT" })
	get := p.WaitRecord(func(r accesslog.Record) bool { return r.Method == "GET" })
	if put.BytesOut != size || get.BytesIn != size {
		t.Fatalf("bytes: upload out %d, download in %d; want %d", put.BytesOut, get.BytesIn, size)
	}
}
