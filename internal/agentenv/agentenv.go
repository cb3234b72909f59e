// Package agentenv computes and renders the environment variables that route an agent's tools through
// swarm-proxy: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, their lowercase twins, NO_PROXY and
// NODE_USE_ENV_PROXY, and with an inspection CA the variables that make common tools trust it, quoted
// for a POSIX shell, fish, a Dockerfile, a compose file or JSON.
package agentenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

// DefaultProxy is the proxy URL used when none is given: the proxy's default listen address.
const DefaultProxy = "http://127.0.0.1:8080"

// DefaultNoProxy lists the destinations that never go through the proxy: the loopback names.
var DefaultNoProxy = []string{"localhost", "127.0.0.1", "::1"}

// Config says where the proxy is and how the agent authenticates to it.
type Config struct {
	// Proxy is the HTTP proxy URL (http:// or https://). Empty means DefaultProxy.
	Proxy string
	// SOCKS is the SOCKS5 proxy URL (socks5:// or socks5h://), set as ALL_PROXY; empty leaves ALL_PROXY out.
	SOCKS string
	// NoProxy is added to DefaultNoProxy.
	NoProxy []string
	// Ticket, when set, puts the session credentials in the userinfo of every proxy URL (broker mode).
	Ticket *ticket.Ticket
	// CA, when set, is the inspection CA certificate's path as the agent sees it (NODE_EXTRA_CA_CERTS).
	CA string
	// CABundle is the path of the system roots plus the CA ("swarm-proxy ca bundle"), for the tools
	// that take one file of roots; empty means DefaultBundleName beside CA.
	CABundle string
}

// DefaultBundleName is the bundle's file name beside the CA when Config.CABundle is empty.
const DefaultBundleName = "ca-bundle.pem"

// BundleVars are the variables that point tools which read one file of trusted roots at the bundle:
// OpenSSL-based tools and Go (SSL_CERT_FILE), Python requests, curl, git, pip, the AWS CLI and SDKs,
// and cargo.
var BundleVars = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE", "CARGO_HTTP_CAINFO"}

// NodeCAVar is Node.js's variable for extra roots, added to its built-in ones: it takes the CA alone.
const NodeCAVar = "NODE_EXTRA_CA_CERTS"

// Where the Dockerfile format installs the CA: Debian's, Ubuntu's and Alpine's trust store, which
// update-ca-certificates merges into the system bundle.
const (
	DockerCAPath     = "/usr/local/share/ca-certificates/swarm-proxy.crt"
	DockerBundlePath = "/etc/ssl/certs/ca-certificates.crt"
)

// DockerfileInstallCA returns the Dockerfile lines that copy the CA at src (a path in the build
// context) into the image's trust store; the variables then point at DockerCAPath and DockerBundlePath.
func DockerfileInstallCA(src string) string {
	return fmt.Sprintf("# the swarm-proxy inspection CA, into the trust store (needs the ca-certificates package)\n"+
		"COPY [%s, %s]\nRUN update-ca-certificates\n", jsonString(src), jsonString(DockerCAPath))
}

// BundlePath is the bundle the variables name for c: CABundle, or DefaultBundleName beside CA.
func (c Config) BundlePath() string {
	if c.CABundle != "" || c.CA == "" {
		return c.CABundle
	}
	return filepath.Join(filepath.Dir(c.CA), DefaultBundleName)
}

// LoadTicket reads a ticket file ("swarm-proxy ticket --json") and checks that it names a session
// and a token and has not expired (ticket.ErrExpired).
func LoadTicket(path string, now time.Time) (*ticket.Ticket, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ticket: %w", err)
	}
	return ParseTicket(path, data, now)
}

// ParseTicket parses a ticket; name is used in error messages.
func ParseTicket(name string, data []byte, now time.Time) (*ticket.Ticket, error) {
	var t ticket.Ticket
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("parse ticket %s: %w", name, err)
	}
	var missing []string
	if t.SessionID == "" {
		missing = append(missing, "session_id")
	}
	if t.Token == "" {
		missing = append(missing, "token")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("parse ticket %s: missing %s (write it with \"swarm-proxy ticket --json\")", name, strings.Join(missing, " and "))
	}
	if !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt) {
		return nil, fmt.Errorf("parse ticket %s: %w at %s; issue a new one with \"swarm-proxy ticket\"", name, ticket.ErrExpired, t.ExpiresAt.Format(time.RFC3339))
	}
	return &t, nil
}

// Var is one environment variable.
type Var struct {
	Name  string
	Value string
}

// Vars returns the variables for c in a fixed order.
func Vars(c Config) ([]Var, error) {
	proxy := c.Proxy
	if proxy == "" {
		proxy = DefaultProxy
	}
	httpURL, err := proxyURL(proxy, []string{"http", "https"}, c.Ticket)
	if err != nil {
		return nil, fmt.Errorf("env: --proxy: %w", err)
	}
	vars := []Var{
		{"HTTP_PROXY", httpURL}, {"HTTPS_PROXY", httpURL},
	}
	if c.SOCKS != "" {
		socksURL, err := proxyURL(c.SOCKS, []string{"socks5", "socks5h"}, c.Ticket)
		if err != nil {
			return nil, fmt.Errorf("env: --socks: %w", err)
		}
		vars = append(vars, Var{"ALL_PROXY", socksURL})
	}
	noProxy := slices.Clone(DefaultNoProxy)
	for _, entry := range c.NoProxy {
		for _, e := range strings.Split(entry, ",") {
			e = strings.TrimSpace(e)
			if e == "" || slices.Contains(noProxy, e) {
				continue
			}
			if !noProxyEntry(e) {
				return nil, fmt.Errorf("env: --no-proxy: %q is not a host, domain or CIDR", e)
			}
			noProxy = append(noProxy, e)
		}
	}
	vars = append(vars, Var{"NO_PROXY", strings.Join(noProxy, ",")})
	// curl reads only the lowercase http_proxy (the uppercase one can be set by a CGI client), and
	// many tools read only one spelling, so both are set.
	n := len(vars)
	for _, v := range vars[:n] {
		vars = append(vars, Var{strings.ToLower(v.Name), v.Value})
	}
	vars = append(vars, Var{"NODE_USE_ENV_PROXY", "1"})
	if c.CA != "" {
		for _, name := range BundleVars {
			vars = append(vars, Var{name, c.BundlePath()})
		}
		vars = append(vars, Var{NodeCAVar, c.CA})
	}
	return vars, nil
}

// noProxyEntry reports whether e can be a NO_PROXY entry: a host, .domain, address or CIDR, in
// printable ASCII without quotes, spaces or shell metacharacters.
func noProxyEntry(e string) bool {
	for _, r := range e {
		if r <= ' ' || r > '~' || strings.ContainsRune("'\"$`\\;&|<>()", r) {
			return false
		}
	}
	return true
}

// proxyURL validates raw (a URL with one of schemes, or a bare host:port meaning the first scheme)
// and adds the ticket's credentials.
func proxyURL(raw string, schemes []string, t *ticket.Ticket) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = schemes[0] + "://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if !slices.Contains(schemes, u.Scheme) {
		return "", fmt.Errorf("%q: scheme must be %s", raw, strings.Join(schemes, " or "))
	}
	if u.Hostname() == "" || u.Port() == "" {
		return "", fmt.Errorf("%q: want %s://HOST:PORT", raw, schemes[0])
	}
	if _, err := net.LookupPort("tcp", u.Port()); err != nil {
		return "", fmt.Errorf("%q: bad port: %w", raw, err)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q: a proxy URL has no path, query or fragment", raw)
	}
	u.Path = ""
	if t != nil {
		if u.User != nil {
			return "", fmt.Errorf("%q: has credentials and --ticket gives them too", raw)
		}
		u.User = url.UserPassword(t.SessionID, t.Token)
	}
	return u.String(), nil
}

// Format is an output format of Render.
type Format string

// Output formats.
const (
	FormatSh         Format = "sh"
	FormatFish       Format = "fish"
	FormatDockerfile Format = "dockerfile"
	FormatCompose    Format = "compose"
	FormatJSON       Format = "json"
)

// Formats lists every Format, for help text and validation.
var Formats = []Format{FormatSh, FormatFish, FormatDockerfile, FormatCompose, FormatJSON}

// Render writes vars in format f.
func Render(w io.Writer, f Format, vars []Var) error {
	var b strings.Builder
	switch f {
	case FormatSh:
		for _, v := range vars {
			fmt.Fprintf(&b, "export %s=%s\n", v.Name, shQuote(v.Value))
		}
	case FormatFish:
		for _, v := range vars {
			fmt.Fprintf(&b, "set -gx %s %s\n", v.Name, fishQuote(v.Value))
		}
	case FormatDockerfile:
		for _, v := range vars {
			fmt.Fprintf(&b, "ENV %s=%s\n", v.Name, dockerfileQuote(v.Value))
		}
	case FormatCompose:
		b.WriteString("environment:\n")
		for _, v := range vars {
			fmt.Fprintf(&b, "  %s: %s\n", v.Name, jsonString(strings.ReplaceAll(v.Value, "$", "$$")))
		}
	case FormatJSON:
		b.WriteString("{\n")
		for i, v := range vars {
			sep := ","
			if i == len(vars)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, "  %s: %s%s\n", jsonString(v.Name), jsonString(v.Value), sep)
		}
		b.WriteString("}\n")
	default:
		return fmt.Errorf("env: unknown format %q (want one of %s)", f, formatList())
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func formatList() string {
	s := make([]string, len(Formats))
	for i, f := range Formats {
		s[i] = string(f)
	}
	return strings.Join(s, ", ")
}

// shQuote quotes s for a POSIX shell: inside single quotes nothing is special but the quote itself.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// fishQuote quotes s for fish: inside single quotes only \' and \\ are escapes.
func fishQuote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
}

// dockerfileQuote quotes s for ENV: in double quotes, backslash escapes ", \ and $ (which would
// otherwise be substituted).
func dockerfileQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`)
	return `"` + r.Replace(s) + `"`
}

// jsonString is s as a JSON string, which is also a valid YAML double-quoted scalar.
func jsonString(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}
