// Package accesslog defines the JSON access-log record that the proxy writes, one object per HTTP
// request or tunnel, and the writer that puts records on stdout or in a size-rotated file. Readers of
// the log (logstats) use the same Record type and field names, so writer and readers cannot drift apart.
package accesslog

import "time"

// Field names of a record. Timestamp, Client, Method, Host, Port, Path and Status are a contract with
// users and tools and must keep these names.
const (
	FieldTimestamp   = "timestamp"
	FieldRequestID   = "request_id"
	FieldClient      = "client"
	FieldSession     = "session"
	FieldProvider    = "provider"
	FieldMethod      = "method"
	FieldHost        = "host"
	FieldPort        = "port"
	FieldPath        = "path"
	FieldStatus      = "status"
	FieldDecision    = "decision"
	FieldMode        = "mode"
	FieldRule        = "rule"
	FieldReason      = "reason"
	FieldUpstream    = "upstream"
	FieldBytesIn     = "bytes_in"
	FieldBytesOut    = "bytes_out"
	FieldDurationMS  = "duration_ms"
	FieldError       = "error"
	FieldInspected   = "inspected"
	FieldTunnelID    = "tunnel_id"
	FieldSecrets     = "secrets"
	FieldTransparent = "transparent"
	FieldOriginalDst = "original_dst"
)

// Decision values.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

// Values of the error field: a machine-readable kind, never a sentence (the words go in the reason
// field). The README's list of kinds is tested against ErrorKinds.
const (
	ErrorNoRule             = "no_rule_matched"       // enforce mode: no allow rule matched the target
	ErrorDeniedByRule       = "denied_by_rule"        // a deny rule matched
	ErrorPrivateAddress     = "private_address"       // the target is or resolves to a special-purpose address
	ErrorClientNotAllowed   = "client_not_allowed"    // the client is not in --allow-clients
	ErrorAuth               = "auth"                  // broker mode: missing or wrong session ticket
	ErrorBadRequest         = "bad_request"           // a malformed request, or not a proxy request
	ErrorCommandNotSupport  = "command_not_supported" // SOCKS5: a command other than CONNECT
	ErrorResolve            = "resolve"               // the target's name did not resolve
	ErrorRefused            = "refused"               // the target refused or reset the connection
	ErrorUnreachable        = "unreachable"           // no route to the target, or another network error
	ErrorTimeout            = "timeout"               // the target did not connect or answer in time
	ErrorNoProvider         = "no_provider"           // broker mode: no provider serves the session
	ErrorInternal           = "internal"              // a fault of swarm-proxy itself
	ErrorUpstream           = "upstream"              // the target's response was malformed or broke off
	ErrorClientClosed       = "client_closed"         // the client left before the response or tunnel was complete
	ErrorTunnelBroken       = "tunnel_broken"         // a tunnel failed on the target's (or provider's) side
	ErrorIdleTimeout        = "idle_timeout"          // a tunnel moved no byte for --tunnel-idle-timeout
	ErrorShuttingDown       = "shutting_down"         // refused or cut because the proxy is shutting down
	ErrorTicketRevoked      = "ticket_revoked"        // a tunnel cut because the credentials that opened it were revoked
	ErrorSecretNotBound     = "secret_not_bound"      // a secret's placeholder in a request whose rule does not list the secret
	ErrorSecretUnavailable  = "secret_unavailable"    // a secret the rule needs has no value (unset variable, unreadable file)
	ErrorSecretCleartext    = "secret_cleartext"      // a secret would go over plain http:// to a port its rule does not list
	ErrorHTTPRuleNotMatched = "http_rule_not_matched" // inspected: no http entry of the rule allows the method and path
	ErrorAmbiguousPath      = "ambiguous_path"        // inspected: a path a server could read two ways (dot segments, //, %2F...)
	ErrorUpstreamTLS        = "upstream_tls"          // the target's TLS certificate did not verify (or it spoke no TLS)
	ErrorClientTLS          = "client_tls"            // the client's TLS handshake with the inspecting proxy failed
	ErrorSNIMismatch        = "sni_mismatch"          // transparent: the destination is not an address of the name the client sent
	ErrorNotRedirected      = "not_redirected"        // transparent: a connection the firewall did not redirect
	// The DNS guard's own kinds (DNSRecord), beside no_rule_matched and denied_by_rule.
	ErrorDNSSuspicious  = FlagDNSSuspicious // refused as likely data tunnelled through DNS
	ErrorDNSBadQuery    = "bad_query"       // not a standard query of class IN
	ErrorDNSInvalidName = "invalid_name"    // a name the policy cannot match
	ErrorDNSUpstream    = "upstream_failed" // no upstream resolver answered
)

// ErrorKinds lists every value of the error field, in the README's order.
var ErrorKinds = []string{
	ErrorNoRule, ErrorDeniedByRule, ErrorPrivateAddress, ErrorClientNotAllowed, ErrorAuth,
	ErrorBadRequest, ErrorCommandNotSupport, ErrorResolve, ErrorRefused, ErrorUnreachable,
	ErrorTimeout, ErrorNoProvider, ErrorInternal, ErrorUpstream, ErrorClientClosed,
	ErrorTunnelBroken, ErrorIdleTimeout, ErrorShuttingDown, ErrorTicketRevoked, ErrorSecretNotBound, ErrorSecretUnavailable, ErrorSecretCleartext,
	ErrorHTTPRuleNotMatched, ErrorAmbiguousPath, ErrorUpstreamTLS, ErrorClientTLS,
	ErrorSNIMismatch, ErrorNotRedirected,
	ErrorDNSSuspicious, ErrorDNSBadQuery, ErrorDNSInvalidName, ErrorDNSUpstream,
}

// Record is one access-log line. BytesOut counts bytes sent from the client towards the target and
// BytesIn bytes received from the target for the client (request and response bodies for plain HTTP,
// raw tunnel bytes for CONNECT and SOCKS5).
type Record struct {
	Timestamp  time.Time `json:"timestamp"`
	RequestID  string    `json:"request_id,omitempty"`
	Client     string    `json:"client"`
	Session    string    `json:"session,omitempty"`
	Provider   string    `json:"provider,omitempty"`
	Method     string    `json:"method"`
	Host       string    `json:"host"`
	Port       int       `json:"port"`
	Path       string    `json:"path,omitempty"`
	Status     int       `json:"status"`
	Decision   string    `json:"decision"`
	Mode       string    `json:"mode"`
	Rule       string    `json:"rule"`
	Reason     string    `json:"reason"`
	Upstream   string    `json:"upstream,omitempty"`
	BytesIn    int64     `json:"bytes_in"`
	BytesOut   int64     `json:"bytes_out"`
	DurationMS float64   `json:"duration_ms"`
	Error      string    `json:"error"`
	// Inspected marks a request decided by method and path under a rule that inspects (a decrypted
	// HTTPS request, or a plain http:// one to such a rule's host).
	Inspected bool `json:"inspected,omitempty"`
	// TunnelID links the records of the requests inspected inside one CONNECT tunnel to the tunnel's
	// own record: both carry it.
	TunnelID string `json:"tunnel_id,omitempty"`
	// Secrets names the secrets put into the request (never their values).
	Secrets []string `json:"secrets,omitempty"`
	// Transparent marks a connection captured by the firewall's redirect (--transparent-listen),
	// OriginalDst the address it was going to.
	Transparent bool   `json:"transparent,omitempty"`
	OriginalDst string `json:"original_dst,omitempty"`
}
