package transparent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
)

// ErrorSNIMismatch is the error of the access record of a connection refused because its
// destination is not an address its name resolves to.
const ErrorSNIMismatch = accesslog.ErrorSNIMismatch

// ErrSNIMismatch is wrapped by Verifier.Check's refusals.
var ErrSNIMismatch = errors.New(ErrorSNIMismatch)

// Answers tells whether the DNS guard gave client addr for name within its TTL (dnsguard.Cache).
type Answers interface {
	Answered(client netip.Addr, name string, addr netip.Addr) bool
}

// Verifier checks that a captured connection goes to an address its claimed name resolves to:
// one the DNS guard answered this client with for this name, or one the proxy's own resolver
// returns now. Without the check a client could send an allowed name (SNI or Host) to any address.
type Verifier struct {
	// Answers is the DNS guard's cache; nil when no guard runs.
	Answers Answers
	// Resolver is the proxy's resolver; nil means net.DefaultResolver.
	Resolver dial.Resolver
}

// Check returns nil when dst is an address of name for client, else an error wrapping
// ErrSNIMismatch that says what the name resolves to.
func (v *Verifier) Check(ctx context.Context, client netip.Addr, name string, dst netip.Addr) error {
	dst = dst.Unmap()
	if v.Answers != nil && v.Answers.Answered(client, name, dst) {
		return nil
	}
	r := v.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return fmt.Errorf("%w: %s was not answered to this client by the DNS guard and does not resolve here (%v), so %s cannot be checked to be its address",
			ErrSNIMismatch, name, err, dst)
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	if slices.Contains(addrs, dst) {
		return nil
	}
	shown := make([]string, 0, min(len(addrs), 4))
	for _, a := range addrs[:min(len(addrs), 4)] {
		shown = append(shown, a.String())
	}
	return fmt.Errorf("%w: the connection goes to %s, which is not an address of %s (it resolves to %s)",
		ErrSNIMismatch, dst, name, strings.Join(shown, ", "))
}
