package socks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Protocol constants from RFC 1928 and RFC 1929.
const (
	version5        = 0x05
	userPassVersion = 0x01

	methodNoAuth       = 0x00
	methodUserPass     = 0x02
	methodNoAcceptable = 0xff

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	userPassOK   = 0x00
	userPassFail = 0x01
)

// Reply is a SOCKS5 reply code (RFC 1928 section 6).
type Reply byte

// Reply codes.
const (
	ReplySucceeded           Reply = 0x00
	ReplyGeneralFailure      Reply = 0x01
	ReplyNotAllowed          Reply = 0x02 // connection not allowed by ruleset
	ReplyNetworkUnreachable  Reply = 0x03
	ReplyHostUnreachable     Reply = 0x04
	ReplyConnectionRefused   Reply = 0x05
	ReplyTTLExpired          Reply = 0x06
	ReplyCommandNotSupported Reply = 0x07
	ReplyAddrNotSupported    Reply = 0x08
)

// Errors of the handshake parser; match them with errors.Is.
var (
	// ErrVersion: the client does not speak SOCKS5 (or RFC 1929 version 1 for the login).
	ErrVersion = errors.New("not a SOCKS5 client")
	// ErrMalformed: a field is out of range (no methods, empty name, non-zero reserved byte).
	ErrMalformed = errors.New("malformed SOCKS5 message")
	// ErrAddrType: the request carries an address type other than IPv4, domain name or IPv6.
	ErrAddrType = errors.New("unsupported SOCKS5 address type")
)

// request is a parsed SOCKS5 request. Host is as the client sent it (not yet normalised).
type request struct {
	cmd  byte
	host string
	port int
}

// readGreeting reads the version identifier/method selection message and returns the methods offered.
func readGreeting(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != version5 {
		return nil, fmt.Errorf("read greeting: %w (version byte 0x%02x)", ErrVersion, hdr[0])
	}
	if hdr[1] == 0 {
		return nil, fmt.Errorf("read greeting: %w: no authentication methods offered", ErrMalformed)
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	return methods, nil
}

// readUserPass reads an RFC 1929 username/password request.
func readUserPass(r io.Reader) (user, pass string, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", "", fmt.Errorf("read login: %w", err)
	}
	if hdr[0] != userPassVersion {
		return "", "", fmt.Errorf("read login: %w (username/password version 0x%02x)", ErrVersion, hdr[0])
	}
	u := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, u); err != nil {
		return "", "", fmt.Errorf("read login: %w", err)
	}
	var plen [1]byte
	if _, err := io.ReadFull(r, plen[:]); err != nil {
		return "", "", fmt.Errorf("read login: %w", err)
	}
	p := make([]byte, plen[0])
	if _, err := io.ReadFull(r, p); err != nil {
		return "", "", fmt.Errorf("read login: %w", err)
	}
	return string(u), string(p), nil
}

// readRequest reads a SOCKS5 request. For ErrAddrType the command is returned so the caller can
// still answer; the connection cannot be used afterwards because the address length is unknown.
func readRequest(r io.Reader) (request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return request{}, fmt.Errorf("read request: %w", err)
	}
	req := request{cmd: hdr[1]}
	if hdr[0] != version5 {
		return req, fmt.Errorf("read request: %w (version byte 0x%02x)", ErrVersion, hdr[0])
	}
	if hdr[2] != 0 {
		return req, fmt.Errorf("read request: %w: reserved byte is 0x%02x", ErrMalformed, hdr[2])
	}
	switch hdr[3] {
	case atypIPv4, atypIPv6:
		b := make([]byte, 4)
		if hdr[3] == atypIPv6 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return req, fmt.Errorf("read request: %w", err)
		}
		a, _ := netip.AddrFromSlice(b)
		req.host = a.String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return req, fmt.Errorf("read request: %w", err)
		}
		if n[0] == 0 {
			return req, fmt.Errorf("read request: %w: empty domain name", ErrMalformed)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return req, fmt.Errorf("read request: %w", err)
		}
		req.host = string(name)
	default:
		return req, fmt.Errorf("read request: %w 0x%02x", ErrAddrType, hdr[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return req, fmt.Errorf("read request: %w", err)
	}
	req.port = int(binary.BigEndian.Uint16(port[:]))
	return req, nil
}

// target normalises the request's destination for the policy.
func (r request) target() (policy.Target, error) {
	if r.port == 0 {
		return policy.Target{}, fmt.Errorf("%w: port 0", policy.ErrBadHost)
	}
	h, err := policy.NormalizeHost(r.host)
	if err != nil {
		return policy.Target{}, err
	}
	return policy.Target{Host: h, Port: r.port}, nil
}

// appendReply encodes a reply with the bound address; an invalid bound address is sent as 0.0.0.0:0.
func appendReply(b []byte, code Reply, bound netip.AddrPort) []byte {
	b = append(b, version5, byte(code), 0)
	a := bound.Addr().Unmap()
	switch {
	case a.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.AsSlice()...)
	case a.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, bound.Port())
}

// boundAddr is the address the proxy uses towards the target, when the connection has one.
func boundAddr(c net.Conn) netip.AddrPort {
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

func commandName(cmd byte) string {
	switch cmd {
	case cmdConnect:
		return "CONNECT"
	case cmdBind:
		return "BIND"
	case cmdUDPAssociate:
		return "UDP ASSOCIATE"
	default:
		return "0x" + strconv.FormatUint(uint64(cmd), 16)
	}
}
