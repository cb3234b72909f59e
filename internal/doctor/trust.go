package doctor

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// defaultSystemBundle is the system bundle of Debian-family systems, which curl, libcurl (git) and
// OpenSSL use when no variable names another file.
const defaultSystemBundle = "/etc/ssl/certs/ca-certificates.crt"

// trustFix names how to make every tool trust the CA at once.
const trustFix = "eval \"$(swarm-proxy env --ca CA.pem)\" (it sets the variable), or install the CA in the system store"

// checkTrust checks that curl, Python, Node and git, as configured by the environment, trust the
// inspection CA: that the file of roots each one reads holds the CA certificate. A failed check names
// the variable to set. It runs when the CA is known (Config.CA, or NODE_EXTRA_CA_CERTS).
func checkTrust(ctx context.Context, c Config, env func(string) string, add func(Result)) {
	caFile := c.CA
	if caFile == "" {
		caFile = env("NODE_EXTRA_CA_CERTS")
	}
	if caFile == "" {
		return
	}
	ca, err := readCA(caFile)
	if err != nil {
		add(Result{Fail, "inspection CA", err.Error(), "give the CA certificate (ca.pem of swarm-proxy ca init) with --ca"})
		return
	}
	add(Result{OK, "inspection CA", fmt.Sprintf("%s (%s)", caFile, ca.Subject.CommonName), ""})
	run := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(ctx, c.Timeout)
		defer cancel()
		out, _ := c.Output(ctx, name, args...)
		return strings.TrimSpace(out)
	}
	installed := func(tool string) bool { _, err := c.LookPath(tool); return err == nil }
	// file returns the first variable that is set, with its value, else the fallback.
	file := func(fallbackName, fallback string, vars ...string) (string, string) {
		for _, v := range vars {
			if f := env(v); f != "" {
				return v, f
			}
		}
		return fallbackName, fallback
	}

	type tool struct {
		name, fix  string
		from, path string // where the path came from (a variable, or a default), and the file
	}
	var tools []tool
	if installed("curl") {
		from, p := file("the system bundle", defaultSystemBundle, "CURL_CA_BUNDLE", "SSL_CERT_FILE")
		tools = append(tools, tool{"curl", "set CURL_CA_BUNDLE to the bundle (swarm-proxy ca bundle)", from, p})
	}
	if installed("python3") {
		from, p := file("", "", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
		if p == "" {
			// requests uses certifi's bundle unless a variable names another; urllib uses OpenSSL's.
			if p = run("python3", "-c", "import certifi; print(certifi.where())"); p != "" {
				from = "certifi (requests' default)"
			} else {
				from, p = file("the system bundle", defaultSystemBundle, "SSL_CERT_FILE")
			}
		}
		tools = append(tools, tool{"python3", "set REQUESTS_CA_BUNDLE and SSL_CERT_FILE to the bundle", from, p})
	}
	if installed("node") {
		// Node has its own copy of the Mozilla roots; extra roots come only from NODE_EXTRA_CA_CERTS.
		from, p := file("", "", "NODE_EXTRA_CA_CERTS")
		tools = append(tools, tool{"node", "set NODE_EXTRA_CA_CERTS to the CA", from, p})
	}
	if installed("git") {
		// libcurl under git ignores CURL_CA_BUNDLE and SSL_CERT_FILE: its own variable or config, else
		// the system bundle.
		from, p := file("", "", "GIT_SSL_CAINFO")
		if p == "" {
			if p = run("git", "config", "--get", "http.sslCAInfo"); p != "" {
				from = "git config http.sslCAInfo"
			} else {
				from, p = "the system bundle", defaultSystemBundle
			}
		}
		tools = append(tools, tool{"git", "set GIT_SSL_CAINFO to the bundle", from, p})
	}
	for _, tl := range tools {
		check := "trust " + tl.name
		if tl.path == "" {
			add(Result{Fail, check, "no file of extra roots is set, so it does not trust the inspection CA", tl.fix + ": " + trustFix})
			continue
		}
		ok, err := holds(tl.path, ca)
		switch {
		case err != nil:
			add(Result{Fail, check, fmt.Sprintf("%s (from %s): %v", tl.path, tl.from, err), tl.fix + ": " + trustFix})
		case !ok:
			add(Result{Fail, check, fmt.Sprintf("%s (from %s) does not hold the inspection CA", tl.path, tl.from), tl.fix + ": " + trustFix})
		default:
			add(Result{OK, check, fmt.Sprintf("%s (from %s) holds the inspection CA", tl.path, tl.from), ""})
		}
	}
}

func readCA(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the CA: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

// holds reports whether the PEM file at path has ca among its certificates.
func holds(path string, ca *x509.Certificate) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false, nil
		}
		if b.Type == "CERTIFICATE" && bytes.Equal(b.Bytes, ca.Raw) {
			return true, nil
		}
	}
}
