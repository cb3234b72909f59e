package tunnel

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

// Version is the tunnel protocol version this package speaks (docs/tunnel-protocol.md).
const Version = 2

// MaxFrame bounds a control frame's payload.
const MaxFrame = 4096

// nonceLen is the size of the broker's handshake nonce in bytes.
const nonceLen = 32

// ErrProtocol is returned (wrapped) for frames that do not follow the protocol.
var ErrProtocol = errors.New("tunnel protocol error")

// writeFrame writes one control frame: a 2-byte big-endian length, then the text payload.
func writeFrame(w io.Writer, payload string) error {
	if len(payload) == 0 || len(payload) > MaxFrame {
		return fmt.Errorf("%w: frame of %d bytes", ErrProtocol, len(payload))
	}
	buf := make([]byte, 2+len(payload))
	binary.BigEndian.PutUint16(buf, uint16(len(payload)))
	copy(buf[2:], payload)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one control frame. It never reads past the frame, so raw bytes that follow stay
// in the connection.
func readFrame(r io.Reader) (string, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n == 0 || n > MaxFrame {
		return "", fmt.Errorf("%w: frame length %d", ErrProtocol, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return string(buf), nil
}

// preface is the provider's first bytes on a connection, before TLS: "SWARM-TUNNEL <version> tls" or
// "... plain", ending in CRLF. It is a line, not a frame, so that a web server (the broker's worker
// port, by mistake) answers it at once with an HTTP error, and it names the provider's transport so
// that a broker can refuse a mismatch in words instead of a handshake that never completes.
func preface(useTLS bool) string {
	return fmt.Sprintf("%s %d %s\r\n", helloWord, Version, transportName(useTLS))
}

const maxPreface = 40

func transportName(useTLS bool) string {
	if useTLS {
		return "tls"
	}
	return "plain"
}

// readPreface reads the provider's preface byte by byte (the bytes after it are TLS's) and returns
// its version and whether the provider speaks TLS.
func readPreface(r io.Reader) (version int, useTLS bool, err error) {
	var line []byte
	var b [1]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, false, err
		}
		if len(line) == 0 && b[0] == 0x16 {
			return 0, false, fmt.Errorf("%w: a TLS handshake without the swarm-tunnel preface (a provider older than protocol version 2?)", ErrProtocol)
		}
		if b[0] == '\n' {
			break
		}
		if len(line) >= maxPreface {
			return 0, false, fmt.Errorf("%w: no swarm-tunnel preface in the first %d bytes", ErrProtocol, maxPreface)
		}
		line = append(line, b[0])
	}
	f := strings.Split(strings.TrimSuffix(string(line), "\r"), " ")
	if len(f) != 3 || f[0] != helloWord {
		return 0, false, fmt.Errorf("%w: not a swarm-tunnel preface", ErrProtocol)
	}
	v, err := strconv.Atoi(f[1])
	if err != nil || v < 1 || strconv.Itoa(v) != f[1] {
		return 0, false, fmt.Errorf("%w: bad version %q", ErrProtocol, short(f[1]))
	}
	switch f[2] {
	case "tls":
		return v, true, nil
	case "plain":
		return v, false, nil
	}
	return 0, false, fmt.Errorf("%w: transport %q is neither tls nor plain", ErrProtocol, short(f[2]))
}

// hello is the broker's answer to the preface, sent before TLS starts:
// "SWARM-TUNNEL <version> <tls|plain> <nonce>".
type hello struct {
	Version int
	TLS     bool
	Nonce   []byte
}

const helloWord = "SWARM-TUNNEL"

func (h hello) String() string {
	return fmt.Sprintf("%s %d %s %s", helloWord, h.Version, transportName(h.TLS), base64.RawURLEncoding.EncodeToString(h.Nonce))
}

func parseHello(s string) (hello, error) {
	f := strings.Split(s, " ")
	if len(f) < 2 || f[0] != helloWord {
		return hello{}, fmt.Errorf("%w: not a swarm-proxy broker hello", ErrProtocol)
	}
	v, err := strconv.Atoi(f[1])
	if err != nil || v < 1 || strconv.Itoa(v) != f[1] {
		return hello{}, fmt.Errorf("%w: bad version %q", ErrProtocol, short(f[1]))
	}
	if v != Version {
		return hello{Version: v}, nil
	}
	if len(f) != 4 || (f[2] != "tls" && f[2] != "plain") {
		return hello{}, fmt.Errorf("%w: want SWARM-TUNNEL <version> <tls|plain> <nonce>", ErrProtocol)
	}
	n, err := base64.RawURLEncoding.DecodeString(f[3])
	if err != nil || len(n) < 16 || len(n) > 64 {
		return hello{}, fmt.Errorf("%w: bad nonce", ErrProtocol)
	}
	return hello{Version: v, TLS: f[2] == "tls", Nonce: n}, nil
}

// authMsg is the provider's login: "AUTH <version> <session> <token-public-part> <proof>".
type authMsg struct {
	Version int
	Session string
	Public  string
	Proof   []byte
}

func (a authMsg) String() string {
	return fmt.Sprintf("AUTH %d %s %s %s", a.Version, a.Session, a.Public, base64.RawURLEncoding.EncodeToString(a.Proof))
}

func parseAuth(s string) (authMsg, error) {
	f := strings.Split(s, " ")
	if len(f) != 5 || f[0] != "AUTH" {
		return authMsg{}, fmt.Errorf("%w: want AUTH <version> <session> <token-id> <proof>", ErrProtocol)
	}
	v, err := strconv.Atoi(f[1])
	if err != nil || v < 1 || strconv.Itoa(v) != f[1] {
		return authMsg{}, fmt.Errorf("%w: bad version %q", ErrProtocol, short(f[1]))
	}
	if err := ticket.ValidSession(f[2]); err != nil {
		return authMsg{}, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	p, err := base64.RawURLEncoding.DecodeString(f[4])
	if err != nil || len(p) != 32 {
		return authMsg{}, fmt.Errorf("%w: bad proof", ErrProtocol)
	}
	return authMsg{Version: v, Session: f[2], Public: f[3], Proof: p}, nil
}

// exporterLabel is the TLS exporter label (RFC 8446 section 7.5) of the channel binding.
const exporterLabel = "EXPORTER-swarm-tunnel"

// binding is the TLS channel's exporter value that the provider's proof covers, so that a login
// relayed from another TLS connection does not verify; nil for a plaintext connection.
func binding(c net.Conn) ([]byte, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil
	}
	cs := tc.ConnectionState()
	return cs.ExportKeyingMaterial(exporterLabel, nil, 32)
}

// challenge is what the provider's proof covers: the version, the broker's nonce, the session and
// the channel binding.
func challenge(version int, nonce []byte, session string, bind []byte) []byte {
	enc := base64.RawURLEncoding
	return fmt.Appendf(nil, "swarm-tunnel %d|%s|%s|%s", version, enc.EncodeToString(nonce), session, enc.EncodeToString(bind))
}

// Refusal codes the broker sends in "ERR <code> <reason>".
const (
	RefuseVersion   = "version"
	RefuseMalformed = "malformed"
	RefuseInvalid   = "invalid"
	RefuseExpired   = "expired"
	RefuseSession   = "wrong_session"
	RefuseShutdown  = "shutting_down"
	RefuseRole      = "wrong_role"
	RefuseRevoked   = "revoked"
	RefuseTransport = "transport"
	RefuseTooMany   = "too_many_providers"
)

// controlMsg is the first frame of the control stream, the first stream the broker opens on a new
// connection. drainMsg is the only frame a provider sends on it: it is shutting down and wants no new
// streams; the broker answers by closing the stream. A provider never opens a stream.
const (
	controlMsg = "CONTROL"
	drainMsg   = "DRAIN"
)

// openMsg is the broker's first frame on a stream: "OPEN <request-id> <host> <port> [check=...]",
// the check being the broker's address stage for a host name (addrCheck).
type openMsg struct {
	ID     string
	Target policy.Target
	Check  *addrCheck
}

func (o openMsg) String() string {
	id := o.ID
	if id == "" {
		id = "-"
	}
	if o.Check != nil {
		return fmt.Sprintf("OPEN %s %s %d %s", id, o.Target.Host, o.Target.Port, o.Check)
	}
	return fmt.Sprintf("OPEN %s %s %d", id, o.Target.Host, o.Target.Port)
}

func parseOpen(s string) (openMsg, error) {
	f := strings.Split(s, " ")
	if (len(f) != 4 && len(f) != 5) || f[0] != "OPEN" {
		return openMsg{}, fmt.Errorf("%w: want OPEN <request-id> <host> <port> [check=...]", ErrProtocol)
	}
	var check *addrCheck
	if len(f) == 5 {
		c, err := parseCheck(f[4])
		if err != nil {
			return openMsg{}, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		check = &c
	}
	if !validID(f[1]) {
		return openMsg{}, fmt.Errorf("%w: bad request id %q", ErrProtocol, short(f[1]))
	}
	port, err := policy.ParsePort(f[3])
	if err != nil {
		return openMsg{}, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	host, err := policy.NormalizeHost(f[2])
	if err != nil || host != f[2] {
		return openMsg{}, fmt.Errorf("%w: host %q is not in normal form", ErrProtocol, short(f[2]))
	}
	id := f[1]
	if id == "-" {
		id = ""
	}
	return openMsg{ID: id, Target: policy.Target{Host: host, Port: port}, Check: check}, nil
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Stream status codes the provider answers an OPEN with; they follow HTTP's meaning.
const (
	StatusOK         = 200
	StatusDenied     = 403
	StatusBadGateway = 502
	StatusTimeout    = 504
)

// kindBrokerDenied is the kind of a 403 for an address the broker's check refused; the reason is
// the address.
const kindBrokerDenied = "broker_denied"

// reply is the provider's answer to an OPEN: "<status> <kind> <reason...>".
type reply struct {
	Status int
	Kind   string // "ok", or a dial.Kind name (denied, resolve, refused, unreachable, timeout, internal), or "busy"
	Reason string
}

func (r reply) String() string {
	reason := strings.Map(func(c rune) rune {
		if c < ' ' || c == 0x7f {
			return ' '
		}
		return c
	}, r.Reason)
	if reason == "" {
		reason = "-"
	}
	s := fmt.Sprintf("%d %s %s", r.Status, r.Kind, reason)
	if len(s) > MaxFrame {
		s = s[:MaxFrame]
	}
	return s
}

func parseReply(s string) (reply, error) {
	f := strings.SplitN(s, " ", 3)
	if len(f) != 3 {
		return reply{}, fmt.Errorf("%w: want <status> <kind> <reason>", ErrProtocol)
	}
	st, err := strconv.Atoi(f[0])
	if err != nil || st < 100 || st > 599 || len(f[0]) != 3 {
		return reply{}, fmt.Errorf("%w: bad status %q", ErrProtocol, short(f[0]))
	}
	if !validID(f[1]) {
		return reply{}, fmt.Errorf("%w: bad kind %q", ErrProtocol, short(f[1]))
	}
	return reply{Status: st, Kind: f[1], Reason: f[2]}, nil
}

// replyFor turns a provider-side dial error into the reply sent to the broker.
func replyFor(err error) reply {
	var br *BrokerRefusal
	if errors.As(err, &br) {
		// The broker words the refusal itself, from its own policy and the address.
		return reply{Status: StatusDenied, Kind: kindBrokerDenied, Reason: br.Addr.String()}
	}
	var de *dial.Error
	if !errors.As(err, &de) {
		return reply{Status: StatusBadGateway, Kind: dial.KindInternal.String(), Reason: err.Error()}
	}
	r := reply{Kind: de.Kind.String(), Reason: de.Reason}
	if de.Err != nil && de.Kind != dial.KindDenied {
		r.Reason = fmt.Sprintf("%s (%v)", de.Reason, dial.RootCause(de.Err))
	}
	switch de.Kind {
	case dial.KindDenied:
		r.Status = StatusDenied
	case dial.KindTimeout:
		r.Status = StatusTimeout
	default:
		r.Status = StatusBadGateway
	}
	return r
}

// kindOf maps a reply's kind back to a dial.Kind on the broker.
func kindOf(r reply) dial.Kind {
	for k := dial.KindInternal; k <= dial.KindNoProvider; k++ {
		if k.String() == r.Kind {
			return k
		}
	}
	switch r.Status {
	case StatusDenied:
		return dial.KindDenied
	case StatusTimeout:
		return dial.KindTimeout
	}
	return dial.KindUnreachable
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
