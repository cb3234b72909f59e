package policy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Target is where a client wants to go: a normalised host name or IP literal, and a port.
type Target struct {
	Host string
	Port int
}

// String returns host:port, with brackets around IPv6 literals.
func (t Target) String() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// Addr returns the target's address when its host is an IP literal.
func (t Target) Addr() (netip.Addr, bool) {
	a, err := netip.ParseAddr(t.Host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// ErrBadHost is returned (wrapped) for host names and ports that cannot be normalised.
var ErrBadHost = errors.New("invalid host")

var profile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// NormalizeHost lowercases a host name, strips one trailing dot, converts IDN to punycode and
// canonicalises IP literals (brackets removed, IPv4-mapped IPv6 unmapped).
func NormalizeHost(host string) (string, error) {
	h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return "", fmt.Errorf("%w %q: zoned addresses are not allowed", ErrBadHost, host)
		}
		return a.Unmap().String(), nil
	}
	if h != host {
		return "", fmt.Errorf("%w %q: brackets around a non-IPv6 address", ErrBadHost, host)
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return "", fmt.Errorf("%w: empty host name", ErrBadHost)
	}
	if len(h) > 4*253 {
		// No name this long in UTF-8 fits in 253 characters once converted; spare IDNA the work.
		return "", fmt.Errorf("%w %q: longer than 253 characters", ErrBadHost, truncate(host))
	}
	if !utf8.ValidString(h) {
		return "", fmt.Errorf("%w %q: not valid UTF-8", ErrBadHost, truncate(host))
	}
	ascii, err := profile.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrBadHost, truncate(host), err)
	}
	if len(ascii) > 253 {
		// Checked on the ASCII form: punycode makes international names longer.
		return "", fmt.Errorf("%w %q: longer than 253 characters", ErrBadHost, truncate(host))
	}
	for _, label := range strings.Split(ascii, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("%w %q: empty or over-long label", ErrBadHost, truncate(host))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%w %q: character %q not allowed", ErrBadHost, truncate(host), c)
			}
		}
	}
	return ascii, nil
}

// ParseTarget parses "host:port" (IPv6 literals in brackets) and normalises the host. When the
// string has no port, defaultPort is used; a defaultPort of 0 makes the port required.
func ParseTarget(hostport string, defaultPort int) (Target, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == 0 || strings.Count(hostport, ":") == 1 {
			return Target{}, fmt.Errorf("%w %q: want host:port", ErrBadHost, truncate(hostport))
		}
		host, portStr = hostport, strconv.Itoa(defaultPort)
	}
	port, err := ParsePort(portStr)
	if err != nil {
		return Target{}, err
	}
	h, err := NormalizeHost(host)
	if err != nil {
		return Target{}, err
	}
	return Target{Host: h, Port: port}, nil
}

// ParsePort parses a decimal TCP port from 1 to 65535.
func ParsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 || s[0] == '+' {
		return 0, fmt.Errorf("%w: port %q is not a number from 1 to 65535", ErrBadHost, truncate(s))
	}
	return p, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// LoopbackAddrs returns the addresses a localhost name resolves to (RFC 6761: "localhost" and the
// names under it are always loopback), for tools that decide a target without resolving it; nil for
// any other name.
func LoopbackAddrs(host string) []netip.Addr {
	if host != "localhost" && !strings.HasSuffix(host, ".localhost") {
		return nil
	}
	return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
}
