package accesslog

import (
	"encoding/json"
	"fmt"
	"time"
)

// Fields and values of the DNS guard's records.
const (
	FieldDNSType = "dns_type"
	FieldAnswers = "answers"
	FieldFlags   = "flags"

	// MethodDNS is the method of a DNS record.
	MethodDNS = "DNS"
	// FlagDNSSuspicious marks a query that looks like tunnelling data through DNS.
	FlagDNSSuspicious = "dns_suspicious"
)

// DNSRecord is the line of one query to the DNS guard. It shares its field names with Record, except
// that Status is the DNS response code's name ("NOERROR", "REFUSED", ...) instead of an HTTP status,
// and it has no port, path or byte counts.
type DNSRecord struct {
	Timestamp time.Time `json:"timestamp"`
	Client    string    `json:"client"`
	Method    string    `json:"method"` // MethodDNS
	Host      string    `json:"host"`   // the queried name
	DNSType   string    `json:"dns_type"`
	Status    string    `json:"status"`
	// Answers lists the addresses given to the client (A and AAAA records), none when refused.
	Answers    []string `json:"answers"`
	Decision   string   `json:"decision"`
	Mode       string   `json:"mode"`
	Rule       string   `json:"rule"`
	Reason     string   `json:"reason"`
	Flags      []string `json:"flags,omitempty"`
	DurationMS float64  `json:"duration_ms"`
	Error      string   `json:"error"`
}

// WriteDNS appends one DNS record.
func (w *Writer) WriteDNS(rec *DNSRecord) error {
	if rec.Answers == nil {
		rec.Answers = []string{}
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("write access log: %w", err)
	}
	line = append(line, '\n')
	w.mu.Lock()
	_, err = w.w.Write(line)
	w.mu.Unlock()
	if err != nil {
		return fmt.Errorf("write access log: %w", err)
	}
	return nil
}
