package policy

import (
	"fmt"
	"net/netip"
)

// DecideName decides a DNS lookup of the normalised name host, before any port is known: the DNS
// guard's question. Like Decide it is called in two stages.
//
// With nil addrs it decides on the name: a deny rule without ports that matches the name refuses it
// (a deny rule limited to ports leaves the name to the connection's decision); an allow host rule
// with any ports admits it with all its addresses; in enforce mode a name no host rule matches is
// Pending when some allow cidr rule exists (only its covered addresses may be answered) and refused
// otherwise; discovery mode admits the rest.
//
// With the addresses a Pending name resolved to, it keeps in Addrs those that an allow cidr rule
// covers and no deny cidr rule does, and refuses when none is left.
func (p *Policy) DecideName(host string, addrs []netip.Addr) Decision {
	t := Target{Host: host}
	for i := range p.Deny {
		r := &p.Deny[i]
		if len(r.Ports) == 0 && r.MatchesHost(host) {
			d := p.deny(CodeDeniedByRule, r, t, fmt.Sprintf("denied by rule %s", r.Describe(p.Source)))
			d.Fix = fmt.Sprintf("remove or narrow rule %s in %s if %s should resolve", r.ID(), p.sourceName(), host)
			return d
		}
	}
	for i := range p.Allow {
		if r := &p.Allow[i]; r.MatchesHost(host) {
			return p.allow(r, addrs)
		}
	}
	if p.Mode == Discovery {
		return p.allow(nil, addrs)
	}
	if addrs == nil {
		for i := range p.Allow {
			if p.Allow[i].Prefix.IsValid() {
				return Decision{Allow: true, Pending: true, Code: CodeAllowedByRule,
					Reason: fmt.Sprintf("%s is answered only with addresses an allow cidr rule covers", host)}
			}
		}
		return p.nameNoRule(host)
	}
	var ok []netip.Addr
	var rule *Rule
	for _, a := range addrs {
		a = a.Unmap()
		// A deny rule holds through the IPv4 address a NAT64, 6to4 or Teredo answer carries, as
		// when the proxy dials it.
		if v4, _ := p.Carried(a); p.cidrRuleFor(p.Deny, a) != nil || v4.IsValid() && p.cidrRuleFor(p.Deny, v4) != nil {
			continue
		}
		if r := p.cidrRuleFor(p.Allow, a); r != nil {
			ok = append(ok, a)
			if rule == nil {
				rule = r
			}
		}
	}
	if len(ok) == 0 {
		d := p.nameNoRule(host)
		d.Reason = fmt.Sprintf("no allow rule matches %s and no allow cidr rule covers its addresses (mode: enforce)", host)
		return d
	}
	return p.allow(rule, ok)
}

// NamingRule returns the first allow or deny host rule that names host, that is every host rule
// that matches it except the catch-all "*"; nil when no rule names it.
func (p *Policy) NamingRule(host string) *Rule {
	for _, list := range [][]Rule{p.Allow, p.Deny} {
		for i := range list {
			if r := &list[i]; r.Host != "*" && r.MatchesHost(host) {
				return r
			}
		}
	}
	return nil
}

// cidrRuleFor returns the first cidr rule of list covering a, whatever its ports.
func (p *Policy) cidrRuleFor(list []Rule, a netip.Addr) *Rule {
	for i := range list {
		if r := &list[i]; r.Prefix.IsValid() && r.Prefix.Contains(a) {
			return r
		}
	}
	return nil
}

func (p *Policy) nameNoRule(host string) Decision {
	d := p.deny(CodeNoRule, nil, Target{Host: host}, fmt.Sprintf("no allow rule matches %s (mode: enforce)", host))
	d.Fix = fmt.Sprintf("to allow it, add to allow in %s: - {host: %s}", p.sourceName(), host)
	return d
}
