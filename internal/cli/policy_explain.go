package cli

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/hostaddr"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// explainDefaultPort is used when HOST has no port: what HTTPS and CONNECT use.
const explainDefaultPort = 443

func newPolicyExplainCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "explain FILE HOST[:PORT] [METHOD PATH]",
		Short: "Say which rule of a policy decides a target or a request, and why",
		Long: `Decide HOST[:PORT] with the policy in FILE as the proxy would before dialing, and print the rule
that decides, the reason, what to change for the other outcome, and the other rules that match.
PORT defaults to 443. An IP address is checked as it is, including the rule that refuses private,
loopback, link-local and metadata addresses and this machine's own addresses unless an allow cidr
rule covers them; so is a localhost name, at the loopback addresses it always resolves to. Any other
name is checked by its rules here, and its addresses are checked again when the proxy resolves it
at dial time (in broker mode its provider resolves it and applies the broker's address rules to
those addresses). The rule named is the one the proxy logs for the same target. With METHOD PATH (the
path as the client sends it, query allowed), a request to a host whose rule inspects is decided
too: by the rule's http entries, and refused when its path is ambiguous.`,
		Example: `  swarm-proxy policy explain policy.yaml api.github.com
  swarm-proxy policy explain policy.yaml api.github.com POST /repos/myorg/tool/issues
  swarm-proxy policy explain policy.yaml 169.254.169.254:80`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 3 {
				return fmt.Errorf("%s: METHOD needs a PATH too (see %s --help)", cmd.CommandPath(), cmd.CommandPath())
			}
			if len(args) == 4 {
				return nil
			}
			return exactArgs(2, "FILE HOST[:PORT] [METHOD PATH]")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return fmt.Errorf("policy explain: %w", err)
			}
			t, err := policy.ParseTarget(args[1], explainDefaultPort)
			if err != nil {
				return fmt.Errorf("policy explain: %w", err)
			}
			var req *explainRequest
			if len(args) == 4 {
				req = &explainRequest{method: args[2], path: policy.PathOf(args[3])}
			}
			return explain(cmd.OutOrStdout(), p, t, hostaddr.Default(), req)
		},
	}
}

// explainRequest is the METHOD PATH of an explain, when given.
type explainRequest struct{ method, path string }

func explain(w io.Writer, p *policy.Policy, t policy.Target, machine policy.Machine, req *explainRequest) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	line := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, a...)) }

	addr, isIP := t.Addr()
	phrase := ""
	var addrs []netip.Addr // the addresses decided, as the proxy decides them when it dials
	loopback := policy.LoopbackAddrs(t.Host)
	switch {
	case isIP:
		// Explained on the machine that runs it: its own addresses are refused like loopback.
		if phrase = p.Classify(addr).Phrase(); phrase == "" && machine.Owns(addr) {
			phrase = policy.ThisMachine
		}
		what := "an IP address, checked as it is"
		if phrase != "" {
			what = "an IP address: " + phrase
		}
		line("target", "%s (%s)", t, what)
	case loopback != nil:
		addrs = loopback
		line("target", "%s (a localhost name: it always resolves to loopback, %s)", t, joinAddrs(addrs))
	default:
		line("target", "%s (a name: the proxy resolves it when it dials and checks every address again)", t)
	}
	line("policy", "%s (mode %s, %d allow and %d deny rules)", p.Source, p.Mode, len(p.Allow), len(p.Deny))

	d := p.DecideDial(machine, t, addrs)
	if d.Allow && !d.Pending && req != nil {
		if rd := p.DecideRequest(d, req.method, req.path); !rd.Allow {
			line("request", "%s %s", req.method, req.path)
			line("decision", "deny (%s)", rd.Code)
			line("rule", "%s", rd.Rule.Describe(p.Source))
			line("reason", "%s", rd.Reason)
			line("fix", "%s", rd.Fix)
			return tw.Flush()
		}
	}
	// A name that no host rule allows in enforce mode can still be admitted by an allow cidr rule
	// once it is resolved: say so instead of a plain allow.
	pending := d.Pending
	switch {
	case pending:
		line("decision", "allow only if every address it resolves to is in an allow cidr rule, else deny")
		for i := range p.Allow {
			if r := &p.Allow[i]; r.Prefix.IsValid() && r.MatchesPort(t.Port) {
				line("", "%s", r.Describe(p.Source))
			}
		}
		line("reason", "no host rule allows %s (mode: enforce)", t)
	case d.Allow && req != nil:
		line("request", "%s %s", req.method, req.path)
		switch {
		case d.Rule.Inspects() && d.Rule.HTTP == nil:
			line("decision", "allow (the rule inspects and allows every request whose path is unambiguous)")
		case d.Rule.Inspects():
			line("decision", "allow (the rule inspects: this request is allowed by its http entries)")
		default:
			line("decision", "allow (the rule does not inspect: every request to the host is allowed)")
		}
	case d.Allow:
		line("decision", "allow")
	default:
		line("decision", "deny")
	}
	if !pending {
		if d.Rule != nil {
			line("rule", "%s", d.Rule.Describe(p.Source))
			if d.Rule.Comment != "" {
				line("comment", "%s", d.Rule.Comment)
			}
			if d.Allow && d.Rule.Inspects() {
				inspectLines(line, d.Rule)
			}
			if d.Allow && d.Rule.UsesSecrets() {
				secretLines(line, d.Rule)
			}
		} else {
			line("rule", "none (%s)", d.Code)
		}
		line("reason", "%s", d.Reason)
	}
	for i, fix := range strings.Split(d.Fix, "\n") {
		if fix == "" {
			continue
		}
		if i == 0 {
			line("fix", "%s", fix)
		} else {
			line("", "%s", fix)
		}
	}
	if also := otherMatches(p, t, addrs, d.Rule); len(also) > 0 {
		line("also matches", "%s", also[0])
		for _, a := range also[1:] {
			line("", "%s", a)
		}
	}
	switch {
	case isIP && phrase != "" && d.Allow:
		line("note", "%s is %s: it is allowed only because an allow cidr rule covers it", addr, phrase)
	case loopback != nil && d.Allow:
		line("note", "the proxy dials only the addresses an allow cidr rule covers: %s", joinAddrs(d.Addrs))
	case !isIP && d.Allow:
		line("note", "if %s resolves to a private, loopback, link-local or metadata address, or to an address of the machine that dials, the proxy refuses it unless an allow cidr rule covers that address", t.Host)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("policy explain: %w", err)
	}
	return nil
}

// inspectLines says how the rule decides each request.
func inspectLines(line func(k, format string, a ...any), r *policy.Rule) {
	if r.HTTP == nil {
		line("inspect", "yes: HTTPS is terminated and every request with an unambiguous path is allowed and logged")
		return
	}
	line("inspect", "yes: HTTPS is terminated and each request must match one of:")
	for i := range r.HTTP {
		line("", "%s", r.HTTP[i].String())
	}
}

// secretLines says which secrets the rule puts into its requests.
func secretLines(line func(k, format string, a ...any), r *policy.Rule) {
	if len(r.Secrets) > 0 {
		line("secrets", "%s: their placeholders are replaced in header values and query parameters; any other placeholder is refused", strings.Join(r.Secrets, ", "))
	}
	for _, in := range r.Inject {
		line("inject", "%s: %s", in.Header, in.Value)
	}
}

// otherMatches describes the rules that match t besides the deciding one, in file order: deny
// rules first, because they are checked first.
func otherMatches(p *policy.Policy, t policy.Target, addrs []netip.Addr, decided *policy.Rule) []string {
	if addr, isIP := t.Addr(); isIP {
		addrs = []netip.Addr{addr}
	}
	// A deny rule also covers an address through the IPv4 address it carries, as the proxy decides.
	covers := func(r *policy.Rule) bool {
		return r.Prefix.IsValid() && slices.ContainsFunc(addrs, func(a netip.Addr) bool {
			v4, _ := p.Carried(a)
			return r.Prefix.Contains(a) || r.List == "deny" && v4.IsValid() && r.Prefix.Contains(v4)
		})
	}
	var out []string
	for _, rules := range [][]policy.Rule{p.Deny, p.Allow} {
		for i := range rules {
			r := &rules[i]
			if r == decided {
				continue
			}
			match := r.MatchesHost(t.Host) || covers(r)
			if match && r.MatchesPort(t.Port) {
				out = append(out, r.Describe(p.Source))
			}
		}
	}
	return out
}

func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, " and ")
}
