// Package policy decides whether a target may be dialed. A Policy is loaded from policy.yaml
// (validated with line numbers) and is a pure function of a target and its resolved addresses: no I/O
// happens while matching. Every Decision names the rule that decided and a human reason.
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

// Mode is how a policy treats targets that no allow rule names.
type Mode string

// Modes.
const (
	// Discovery allows everything that is not denied, so operators can learn what agents use.
	Discovery Mode = "discovery"
	// Enforce allows only what an allow rule matches.
	Enforce Mode = "enforce"
)

// Policy is a validated, immutable policy.
type Policy struct {
	Mode  Mode
	Allow []Rule
	Deny  []Rule
	// NAT64 are the prefixes of the network's own NAT64 translators (RFC 6052): an address in one
	// is judged by the IPv4 address it carries, like one in 64:ff9b::/96.
	NAT64  []netip.Prefix
	Source string // file the policy came from, or "" for a built-in policy
}

// Carried returns the IPv4 address that a is translated or relayed to, when a carries one (a NAT64
// address under one of the policy's prefixes or the well-known one, 6to4, Teredo, ...), and the
// form's name; an invalid address otherwise.
func (p *Policy) Carried(a netip.Addr) (netip.Addr, string) {
	for _, n := range p.NAT64 {
		if n.Contains(a) {
			return nat64Embedded(a, n.Bits()), "NAT64"
		}
	}
	return Carried(a)
}

// Classify is the package's Classify, with the policy's NAT64 prefixes: an address under one is
// public or refused as the IPv4 address it carries is.
func (p *Policy) Classify(a netip.Addr) Class {
	for _, n := range p.NAT64 {
		if n.Contains(a) {
			v4 := nat64Embedded(a, n.Bits())
			if inner := Classify(v4); inner.Refused() {
				return Class{Kind: inner.Kind, Via: "NAT64", Embedded: v4}
			}
			return Class{}
		}
	}
	return Classify(a)
}

// Rule is one validated allow or deny entry.
type Rule struct {
	List    string // "allow" or "deny"
	Index   int    // 1-based position in its list
	Line    int    // line in the policy file, 0 for built-in rules
	Name    string
	Comment string
	Host    string       // normalised name, "*.suffix" or "*"; empty for cidr rules
	Prefix  netip.Prefix // valid for cidr rules
	Ports   []int        // empty: any port
	// Inspect: connections this rule allows have their HTTPS terminated and each request decided by
	// DecideRequest (set by http, access or inspect: true).
	Inspect bool
	// HTTP lists what requests the rule allows when it inspects; nil with Inspect allows every request.
	HTTP []HTTPEntry

	// Inject are the headers set from secrets on every request the rule allows; Secrets the secrets
	// whose placeholders the rule's requests may carry. Both are empty on deny and cidr rules.
	Inject  []secrets.Injection
	Secrets []string

	// id and allowReason are ID() and the reason of an allow by this rule, made once by
	// Policy.prepare so that deciding a request formats no strings.
	id, allowReason string
}

// ID names the rule in logs and headers: its name when it has one, else list#index.
func (r *Rule) ID() string {
	switch {
	case r == nil:
		return ""
	case r.id != "":
		return r.id
	case r.Name != "":
		return r.Name
	}
	return r.List + "#" + strconv.Itoa(r.Index)
}

// Describe says what the rule matches and where it is written.
func (r *Rule) Describe(source string) string {
	var what string
	if r.Host != "" {
		what = "host " + r.Host
	} else {
		what = "cidr " + r.Prefix.String()
	}
	if len(r.Ports) > 0 {
		what += fmt.Sprintf(", ports %v", r.Ports)
	}
	if r.Inspect {
		what += ", inspected"
	}
	if source != "" && r.Line > 0 {
		what += fmt.Sprintf(", %s line %d", source, r.Line)
	}
	return fmt.Sprintf("%s (%s)", r.ID(), what)
}

// MatchesHost reports whether the rule's host pattern matches the normalised host h.
func (r *Rule) MatchesHost(h string) bool {
	switch {
	case r.Host == "":
		return false
	case r.Host == "*":
		return true
	case strings.HasPrefix(r.Host, "*."):
		return strings.HasSuffix(h, r.Host[1:])
	default:
		return r.Host == h
	}
}

// MatchesPort reports whether the rule applies to port.
func (r *Rule) MatchesPort(port int) bool { return len(r.Ports) == 0 || slices.Contains(r.Ports, port) }

func (r *Rule) matchesAddr(a netip.Addr, port int) bool {
	return r.Prefix.IsValid() && r.Prefix.Contains(a) && r.MatchesPort(port)
}

// Code is the machine-readable kind of a decision, used in headers, logs and metrics.
type Code string

// Decision codes.
const (
	CodeAllowedByRule Code = "allowed_by_rule"
	CodeDiscovery     Code = "discovery"
	CodeDeniedByRule  Code = "denied_by_rule"
	CodeNoRule        Code = "no_rule_matched"
	CodeSpecialAddr   Code = "private_address"
)

// Decision is the outcome of Decide.
type Decision struct {
	Allow  bool
	Code   Code
	Rule   *Rule        // the rule that decided; nil when none did
	Reason string       // one human sentence
	Fix    string       // what to change to get the other outcome; empty when allowed
	Addrs  []netip.Addr // when addresses were given: those that may be dialed
	// Pending marks a name-stage allow in enforce mode that no host rule made: only an allow cidr
	// rule covering the resolved addresses can admit the target, so whoever resolves must decide again.
	Pending bool
}

// RuleID is the deciding rule's ID, or "".
func (d Decision) RuleID() string { return d.Rule.ID() }

// Decide decides whether target t may be dialed at addrs.
//
// Call it twice: first with nil addrs, before resolving a name, so that a host that no address could
// rescue is refused without a DNS lookup; then with every resolved address. The second decision lists
// in Addrs the addresses that passed; dial only those. An IP-literal target is checked fully on the
// first call.
func (p *Policy) Decide(t Target, addrs []netip.Addr) Decision { return p.DecideOn(nil, t, addrs) }

// DecideDial is the decision the proxy makes for t on machine m when it dials t at addrs: the name
// stage (DecideOn with no addresses), then, when that allows and addrs are known, the address stage.
// The rule it names is the one the proxy logs; tools that decide offline (policy explain, policy
// replay) call it with the addresses they know, or none.
func (p *Policy) DecideDial(m Machine, t Target, addrs []netip.Addr) Decision {
	d := p.DecideOn(m, t, nil)
	if !d.Allow || addrs == nil {
		return d
	}
	return p.DecideOn(m, t, addrs)
}

// Machine tells which addresses are assigned to the machine that dials.
type Machine interface {
	Owns(netip.Addr) bool
}

// DecideOn is Decide for a dialer on machine m (nil: none): an address of m is refused like loopback
// unless an allow cidr rule covers it, because a service bound to every address answers there too.
func (p *Policy) DecideOn(m Machine, t Target, addrs []netip.Addr) Decision {
	if lit, ok := t.Addr(); ok && addrs == nil {
		addrs = []netip.Addr{lit}
	}
	for i := range p.Deny {
		r := &p.Deny[i]
		if r.MatchesHost(t.Host) && r.MatchesPort(t.Port) {
			return p.deny(CodeDeniedByRule, r, t, fmt.Sprintf("denied by rule %s", r.Describe(p.Source)))
		}
	}
	var hostRule *Rule
	for i := range p.Allow {
		if r := &p.Allow[i]; r.MatchesHost(t.Host) && r.MatchesPort(t.Port) {
			hostRule = r
			break
		}
	}
	if addrs == nil {
		if p.Mode == Enforce && hostRule == nil {
			if !p.hasCIDRAllowFor(t.Port) {
				return p.noRule(t)
			}
			return Decision{Allow: true, Pending: true, Code: CodeAllowedByRule,
				Reason: fmt.Sprintf("%s is allowed only if its addresses fall in an allow cidr rule", t.Host)}
		}
		return p.allow(hostRule, nil)
	}

	var ok []netip.Addr
	var first Decision
	var rule *Rule
	for _, a := range addrs {
		a = a.Unmap()
		d, r := p.decideAddr(m, t, a, hostRule)
		if !d.Allow {
			if first.Code == "" {
				first = d
			}
			continue
		}
		if rule == nil {
			rule = r
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		return first
	}
	if hostRule.Inspects() {
		// A cidr rule that admits the addresses does not lift the host rule's per-request checks.
		rule = hostRule
	}
	d := p.allow(rule, ok)
	return d
}

// decideAddr checks one resolved address; it returns the decision and the allow rule that permits it.
// A deny cidr rule matches an address that carries an IPv4 address (NAT64, 6to4, Teredo) when it
// covers either, because the carried one is where a translator or relay delivers the packets: a
// deny rule for an IPv4 range holds against the IPv6 forms of its addresses, DNS64 answers included.
// An allow cidr rule matches only the address itself: the carried address is reached through
// another machine, whose loopback and private ranges are not the ones the rule names.
func (p *Policy) decideAddr(m Machine, t Target, a netip.Addr, hostRule *Rule) (Decision, *Rule) {
	v4, via := p.Carried(a)
	for i := range p.Deny {
		if r := &p.Deny[i]; r.matchesAddr(a, t.Port) || v4.IsValid() && r.matchesAddr(v4, t.Port) {
			what := a.String()
			if !r.Prefix.Contains(a) {
				what = fmt.Sprintf("%s (%s for %s)", a, via, v4)
			}
			return p.deny(CodeDeniedByRule, r, t, fmt.Sprintf("%s is denied by rule %s", what, r.Describe(p.Source))), nil
		}
	}
	var cidrRule *Rule
	for i := range p.Allow {
		if r := &p.Allow[i]; r.matchesAddr(a, t.Port) {
			cidrRule = r
			break
		}
	}
	phrase := p.Classify(a).Phrase()
	if phrase == "" && m != nil && m.Owns(a) {
		phrase = ThisMachine
	}
	// One naming for every stage and tool: the host rule that admitted the name decides, as it did
	// before the name was resolved, unless the address is one only an allow cidr rule may admit.
	if cidrRule != nil {
		if hostRule != nil && phrase == "" {
			return Decision{Allow: true}, hostRule
		}
		return Decision{Allow: true}, cidrRule
	}
	if phrase != "" {
		d := p.deny(CodeSpecialAddr, nil, t, fmt.Sprintf("%s resolves to %s, %s, which is refused unless an allow rule with a cidr covers it", t.Host, a, phrase))
		if t.Host == a.String() {
			d.Reason = fmt.Sprintf("%s is %s, which is refused unless an allow rule with a cidr covers it", a, phrase)
		}
		d.Fix = fmt.Sprintf("if this destination is intended, add to allow in %s: - {cidr: \"%s/%d\", ports: [%d]}", p.sourceName(), a, a.BitLen(), t.Port)
		return d, nil
	}
	switch {
	case hostRule != nil || p.Mode == Discovery:
		return Decision{Allow: true}, hostRule
	default:
		return p.noRule(t), nil
	}
}

func (p *Policy) hasCIDRAllowFor(port int) bool {
	for i := range p.Allow {
		if r := &p.Allow[i]; r.Prefix.IsValid() && r.MatchesPort(port) {
			return true
		}
	}
	return false
}

func (p *Policy) allow(r *Rule, addrs []netip.Addr) Decision {
	if r != nil {
		reason := r.allowReason
		if reason == "" {
			reason = "allowed by rule " + r.Describe(p.Source)
		}
		return Decision{Allow: true, Code: CodeAllowedByRule, Rule: r, Reason: reason, Addrs: addrs}
	}
	return Decision{Allow: true, Code: CodeDiscovery, Reason: "discovery mode allows what is not denied", Addrs: addrs}
}

func (p *Policy) noRule(t Target) Decision {
	d := p.deny(CodeNoRule, nil, t, fmt.Sprintf("no allow rule matches %s (mode: enforce)", t))
	d.Fix = fmt.Sprintf("to allow it, add to allow in %s: - {host: %s, ports: [%d]}", p.sourceName(), t.Host, t.Port)
	if _, isIP := t.Addr(); isIP {
		d.Fix = fmt.Sprintf("to allow it, add to allow in %s: - {cidr: \"%s\", ports: [%d]}", p.sourceName(), t.Host, t.Port)
	}
	return d
}

func (p *Policy) deny(code Code, r *Rule, t Target, reason string) Decision {
	d := Decision{Code: code, Rule: r, Reason: reason}
	if r != nil {
		d.Fix = fmt.Sprintf("remove or narrow rule %s in %s if %s should be reachable", r.ID(), p.sourceName(), t)
	}
	return d
}

func (p *Policy) sourceName() string {
	if p.Source == "" {
		return "a policy file (start the proxy with --policy FILE)"
	}
	return p.Source
}

// prepare makes the strings that decisions by p's rules carry, once, when p is built.
func (p *Policy) prepare() *Policy {
	for _, list := range [][]Rule{p.Allow, p.Deny} {
		for i := range list {
			r := &list[i]
			r.id = r.ID()
			r.allowReason = "allowed by rule " + r.Describe(p.Source)
		}
	}
	return p
}

// Default is the policy in force when no file is given: discovery mode, no rules, so every public
// destination is allowed and logged while private and metadata addresses stay refused.
func Default() *Policy { return &Policy{Mode: Discovery} }

// Target sets for a provider's --allow-targets.
const (
	TargetsAny      = "any"
	TargetsPublic   = "public"
	TargetsLoopback = "loopback"
)

// ForTargets returns the built-in policy for a provider's --allow-targets value: "public" refuses
// private and special addresses (the proxy's SSRF rules), "loopback" allows only the machine's own
// loopback services, "any" allows every address.
func ForTargets(name string) (*Policy, error) {
	cidrs := func(list ...string) []Rule {
		rules := make([]Rule, len(list))
		for i, c := range list {
			rules[i] = Rule{List: "allow", Index: i + 1, Name: "allow-targets-" + name, Prefix: netip.MustParsePrefix(c)}
		}
		return rules
	}
	switch name {
	case TargetsPublic:
		return Default(), nil
	case TargetsAny:
		return (&Policy{Mode: Discovery, Allow: cidrs("0.0.0.0/0", "::/0")}).prepare(), nil
	case TargetsLoopback:
		return (&Policy{Mode: Enforce, Allow: cidrs("127.0.0.0/8", "::1/128")}).prepare(), nil
	}
	return nil, fmt.Errorf("allow-targets %q: want any, public or loopback", name)
}

// Holder holds the policy in force and swaps it atomically on reload.
type Holder struct{ p atomic.Pointer[Policy] }

// NewHolder returns a holder with p in force.
func NewHolder(p *Policy) *Holder {
	h := &Holder{}
	h.p.Store(p)
	return h
}

// Load returns the policy in force.
func (h *Holder) Load() *Policy { return h.p.Load() }

// Store puts p in force.
func (h *Holder) Store(p *Policy) { h.p.Store(p) }
