package dnsguard

import (
	"fmt"
	"math"
	"strings"

	"github.com/miekg/dns"
)

// Limits beyond which a query looks like data tunnelled through DNS. Names of real services stay
// well inside them; tunnelling tools fill labels to 63 characters with encoded data.
const (
	MaxLabelLen = 40  // characters in one label
	MaxNameLen  = 120 // characters in the whole name
	// EntropyMinLen and MaxEntropy: a label of at least EntropyMinLen characters (outside the last
	// two labels, the zone) whose Shannon entropy is at least MaxEntropy bits per character looks
	// like encoded data (base32 of random bytes reaches about 4.4 over 32 characters).
	EntropyMinLen = 24
	MaxEntropy    = 4.0
)

// suspicion says why a query looks like tunnelling, or returns "". name is normalised; named
// reports whether a host rule names it (not the catch-all "*"), exact whether an allow rule names
// exactly this name: an operator who wrote the name out accepts its shape.
func suspicion(name string, qtype uint16, named, exact bool) string {
	switch qtype {
	case dns.TypeTXT, dns.TypeNULL, dns.TypeANY:
		if !named {
			return fmt.Sprintf("a %s query under a name no rule names", dns.TypeToString[qtype])
		}
	}
	if exact {
		return ""
	}
	if len(name) > MaxNameLen {
		return fmt.Sprintf("the name is %d characters long (more than %d)", len(name), MaxNameLen)
	}
	labels := strings.Split(name, ".")
	for i, l := range labels {
		if len(l) > MaxLabelLen {
			return fmt.Sprintf("a label is %d characters long (more than %d)", len(l), MaxLabelLen)
		}
		if i < len(labels)-2 && len(l) >= EntropyMinLen {
			if e := entropy(l); e >= MaxEntropy {
				return fmt.Sprintf("a %d-character label has an entropy of %.1f bits per character (%.1f or more looks like encoded data)", len(l), e, MaxEntropy)
			}
		}
	}
	return ""
}

// entropy is the Shannon entropy of s in bits per byte.
func entropy(s string) float64 {
	var counts [256]int
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
	}
	var h float64
	n := float64(len(s))
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}
