package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// addrCheck is the address stage of the broker's policy for one target name. The broker cannot
// resolve the name (its provider does, on its own network), so it sends this check in the open
// header and the provider applies it to every address it resolved, with the same address classifier
// the broker's own Decide uses (policy.Policy.Classify, with the broker's NAT64 prefixes):
//
//  1. an address in a deny prefix, or carrying an IPv4 address in one (NAT64, 6to4, Teredo), is
//     refused;
//  2. an address in an allow prefix is allowed;
//  3. an address the classifier calls private, loopback, metadata, ... is refused;
//  4. any other address is allowed when rest is set (the name was allowed by a host rule, or the
//     policy is in discovery mode), else refused (enforce mode: only an allow cidr rule admits it).
//
// This is the order of policy.Decide for one resolved address, so a name's addresses get the
// decision they would get on a broker that resolved them itself.
type addrCheck struct {
	nat64, deny, allow []netip.Prefix
	rest               bool
}

// checkFor builds the check for t, which the broker's policy p admitted at the name stage with
// decision d.
func checkFor(p *policy.Policy, t policy.Target, d policy.Decision) addrCheck {
	c := addrCheck{rest: !d.Pending, nat64: p.NAT64}
	for i := range p.Deny {
		if r := &p.Deny[i]; r.Prefix.IsValid() && r.MatchesPort(t.Port) {
			c.deny = append(c.deny, r.Prefix)
		}
	}
	for i := range p.Allow {
		if r := &p.Allow[i]; r.Prefix.IsValid() && r.MatchesPort(t.Port) {
			c.allow = append(c.allow, r.Prefix)
		}
	}
	return c
}

// allows applies the check to one resolved address.
func (c addrCheck) allows(a netip.Addr) bool {
	a = a.Unmap()
	classifier := &policy.Policy{NAT64: c.nat64}
	v4, _ := classifier.Carried(a)
	for _, p := range c.deny {
		if p.Contains(a) || v4.IsValid() && p.Contains(v4) {
			return false
		}
	}
	for _, p := range c.allow {
		if p.Contains(a) {
			return true
		}
	}
	if classifier.Classify(a).Refused() {
		return false
	}
	return c.rest
}

// String is the check's field of the open header: "check=" and comma-separated entries, "~prefix"
// for a NAT64 prefix, "-prefix" for a deny, "+prefix" for an allow, in that order, and a final "*"
// when rest is set ("check=*" with no rules).
func (c addrCheck) String() string {
	var b strings.Builder
	b.WriteString("check=")
	sep := ""
	for _, list := range []struct {
		sign     string
		prefixes []netip.Prefix
	}{{"~", c.nat64}, {"-", c.deny}, {"+", c.allow}} {
		for _, p := range list.prefixes {
			b.WriteString(sep + list.sign + p.Masked().String())
			sep = ","
		}
	}
	if c.rest {
		b.WriteString(sep + "*")
	}
	return b.String()
}

var errBadCheck = errors.New("bad address check")

func parseCheck(s string) (addrCheck, error) {
	body, ok := strings.CutPrefix(s, "check=")
	if !ok {
		return addrCheck{}, fmt.Errorf("%w: want check=<entries>", errBadCheck)
	}
	var c addrCheck
	if body == "" {
		return c, nil
	}
	f := strings.Split(body, ",")
	if f[len(f)-1] == "*" {
		c.rest, f = true, f[:len(f)-1]
	}
	for _, e := range f {
		if len(e) < 2 || (e[0] != '-' && e[0] != '+' && e[0] != '~') {
			return addrCheck{}, fmt.Errorf("%w: entry %q", errBadCheck, short(e))
		}
		p, err := netip.ParsePrefix(e[1:])
		if err != nil || p != p.Masked() {
			return addrCheck{}, fmt.Errorf("%w: prefix %q", errBadCheck, short(e[1:]))
		}
		switch e[0] {
		case '~':
			if len(c.deny) > 0 || len(c.allow) > 0 {
				return addrCheck{}, fmt.Errorf("%w: NAT64 entries come first", errBadCheck)
			}
			if _, err := policy.ParseNAT64Prefix(e[1:]); err != nil {
				return addrCheck{}, fmt.Errorf("%w: NAT64 prefix %q", errBadCheck, short(e[1:]))
			}
			c.nat64 = append(c.nat64, p)
		case '-':
			if len(c.allow) > 0 {
				return addrCheck{}, fmt.Errorf("%w: deny entries come first", errBadCheck)
			}
			c.deny = append(c.deny, p)
		default:
			c.allow = append(c.allow, p)
		}
	}
	return c, nil
}

// BrokerRefusal is the provider's error for a resolved address that the broker's address check
// refuses; the broker turns it into its own policy's decision for that address.
type BrokerRefusal struct{ Addr netip.Addr }

func (e *BrokerRefusal) Error() string {
	return fmt.Sprintf("the broker's policy refuses %s", e.Addr)
}
