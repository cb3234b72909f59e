package cli

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// One address syntax for every flag: a proxy or broker is HOST:PORT or http://HOST:PORT, and a
// listen address is HOST:PORT (or http://HOST:PORT), ":PORT" for every interface, or a port alone
// for loopback.

// proxyFlagURL returns the URL of the HTTP proxy a flag names: HOST:PORT is http://HOST:PORT.
// Whether the URL is usable is for its user to check.
func proxyFlagURL(v string) string {
	if v != "" && !strings.Contains(v, "://") {
		return "http://" + v
	}
	return v
}

// listenAddr checks the value of the listen flag name and returns the address to listen on. A
// port alone listens on loopback (127.0.0.1:PORT), never on every interface; "" stays "" (the
// listener is off).
func listenAddr(name, v string) (string, error) {
	if v == "" {
		return "", nil
	}
	bad := func(why string) error {
		return fmt.Errorf("--%s %q: %s; want HOST:PORT, e.g. 127.0.0.1:8080 (\":8080\" listens on every interface)", name, v, why)
	}
	addr := v
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil || u.Scheme != "http" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return "", bad("not an address")
		}
		addr = u.Host
	}
	if isPort(addr) {
		addr = net.JoinHostPort("127.0.0.1", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", bad("no port")
	}
	if !isPort(port) {
		return "", bad(fmt.Sprintf("port %q is not a number from 0 to 65535", port))
	}
	if strings.ContainsAny(host, " /@") {
		return "", bad(fmt.Sprintf("host %q is not a name or an IP address", host))
	}
	return addr, nil
}

func isPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 65535 && s != "" && s[0] != '+' && s[0] != '-'
}

// proxyHostPort returns the HOST:PORT of a flag naming a proxy: http://HOST:PORT is HOST:PORT.
func proxyHostPort(v string) string {
	return strings.TrimSuffix(strings.TrimPrefix(v, "http://"), "/")
}
