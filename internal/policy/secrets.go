package policy

import (
	"errors"
	"fmt"
	"net/http"
	"slices"

	"golang.org/x/net/http/httpguts"

	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

// UsesSecrets reports whether the rule injects headers or lets placeholders through, so that its
// requests must be read (plain HTTP, or HTTPS inspected: such a rule has Inspect set) for the
// secrets to be put in.
func (r *Rule) UsesSecrets() bool { return r != nil && (len(r.Inject) > 0 || len(r.Secrets) > 0) }

// notInjectable lists headers that an inject entry may not set: they frame the message or the
// connection, and the proxy owns them.
var notInjectable = []string{"Connection", "Content-Length", "Host", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// secretFields validates the rule's inject and secrets entries.
func (s RuleSpec) secretFields(list string, r Rule) ([]secrets.Injection, []string, error) {
	if len(s.Inject) == 0 && len(s.Secrets) == 0 {
		return nil, nil, nil
	}
	switch {
	case list != "allow":
		return nil, nil, errors.New("inject and secrets go on allow rules")
	case r.Host == "" && s.CIDR != "":
		return nil, nil, errors.New("inject and secrets need a host rule: a secret is bound to a name, not to addresses")
	case r.Host == "*":
		return nil, nil, errors.New(`inject and secrets on host "*" would let an agent send the secrets to any host: name the service's host`)
	}
	var errs []error
	if s.Inspect != nil && !*s.Inspect {
		errs = append(errs, errors.New("inspect: false contradicts inject and secrets, which need the proxy to read the requests (their HTTPS is inspected): remove inspect: false"))
	}
	var names []string
	for _, name := range s.Secrets {
		if err := secrets.ValidName(name); err != nil {
			errs = append(errs, fmt.Errorf("secrets: %q: %w", name, err))
			continue
		}
		if slices.Contains(names, name) {
			errs = append(errs, fmt.Errorf("secrets: %q is listed twice", name))
			continue
		}
		names = append(names, name)
	}
	var inject []secrets.Injection
	for i, in := range s.Inject {
		where := fmt.Sprintf("inject[%d]", i)
		header := http.CanonicalHeaderKey(in.Header)
		switch {
		case in.Header == "":
			errs = append(errs, fmt.Errorf("%s: header is missing", where))
			continue
		case !httpguts.ValidHeaderFieldName(in.Header):
			errs = append(errs, fmt.Errorf("%s: %q is not a valid header name", where, in.Header))
			continue
		case slices.Contains(notInjectable, header):
			errs = append(errs, fmt.Errorf("%s: %s frames the message or the connection and cannot be injected", where, header))
			continue
		case slices.ContainsFunc(inject, func(o secrets.Injection) bool { return o.Header == header }):
			errs = append(errs, fmt.Errorf("%s: header %s is injected twice", where, header))
			continue
		}
		tmpl, err := secrets.ParseTemplate(in.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): value %w", where, header, err))
			continue
		}
		if !httpguts.ValidHeaderFieldValue(tmpl.Literal()) {
			errs = append(errs, fmt.Errorf("%s (%s): the value has a character a header cannot hold (a control character or line break)", where, header))
			continue
		}
		for _, name := range tmpl.Secrets() {
			if !slices.Contains(s.Secrets, name) {
				errs = append(errs, fmt.Errorf("%s (%s) uses secret %q, which this rule's secrets: does not list; add it: secrets: [%s]", where, header, name, name))
			}
		}
		inject = append(inject, secrets.Injection{Header: header, Value: tmpl})
	}
	return inject, names, errors.Join(errs...)
}

// unboundSecrets reports the rules whose secrets could never be bound: a host rule for an IP address
// that an allow cidr rule also covers is not the rule that decides requests to that address (the cidr
// rule is), so its requests would carry no secret and their placeholders would be refused.
func (p *Policy) unboundSecrets() []problemAt {
	var problems []problemAt
	for i := range p.Allow {
		r := &p.Allow[i]
		addr, isIP := (Target{Host: r.Host}).Addr()
		if !r.UsesSecrets() || !isIP {
			continue
		}
		for j := range p.Allow {
			c := &p.Allow[j]
			if !c.Prefix.IsValid() || !c.Prefix.Contains(addr) || !portsOverlap(r.Ports, c.Ports) {
				continue
			}
			problems = append(problems, problemAt{r.Line, fmt.Sprintf("%s: its inject and secrets would never apply: requests to %s are decided by %s, which covers the address; name the service by its host name, or narrow that cidr rule", r.ID(), addr, c.Describe(p.Source))})
			break
		}
	}
	return problems
}

// portsOverlap reports whether two rules' port lists (empty: any port) share a port.
func portsOverlap(a, b []int) bool {
	if len(a) == 0 || len(b) == 0 {
		return true
	}
	return slices.ContainsFunc(a, func(port int) bool { return slices.Contains(b, port) })
}
