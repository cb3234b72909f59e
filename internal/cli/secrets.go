package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

// loadSecrets loads the --secrets file at start: a broken file stops the command, a secret without
// a value is logged (requests that need it fail closed).
func loadSecrets(path string, logger *slog.Logger) (*secrets.Holder, error) {
	if path == "" {
		return secrets.NewHolder(nil), nil
	}
	s, err := secrets.Load(path)
	if err != nil {
		return nil, err
	}
	logUnresolved(s, logger)
	return secrets.NewHolder(s), nil
}

func logUnresolved(s *secrets.Set, logger *slog.Logger) {
	for _, sec := range s.Unresolved() {
		logger.Warn("secret unavailable; requests that need it are refused with secret_unavailable", "file", s.Source, "secret", sec.Name, "err", sec.Err)
	}
}

// warnUnknownSecrets logs each secret that a rule of p names but the secrets in force do not define:
// its requests will be refused with secret_unavailable.
func warnUnknownSecrets(p *policy.Policy, s *secrets.Set, logger *slog.Logger) {
	for i := range p.Allow {
		r := &p.Allow[i]
		for _, name := range r.Secrets {
			if s.Lookup(name) == nil {
				logger.Warn("a policy rule names a secret that the secrets file does not define; its requests are refused with secret_unavailable", "rule", r.ID(), "secret", name, "secrets_file", orNone(s))
			}
		}
	}
}

func orNone(s *secrets.Set) string {
	if s == nil {
		return "(none: start with --secrets FILE)"
	}
	return s.Source
}

// watchSecrets reloads the secrets on SIGHUP and at every poll, so that a changed secrets file, a
// rotated value file or a file that now resolves takes effect without a restart. The file is read once
// it has stopped changing (policy.ReadSettled); one that does not load is reported once per distinct
// error and the secrets in force stay. Nothing logged holds a value.
func watchSecrets(ctx context.Context, path string, poll time.Duration, h *secrets.Holder, pol *policy.Holder, logger *slog.Logger) {
	lastErr := ""
	onReload(ctx, poll, "poll", func(why string) {
		// A file being rewritten in place is taken only once it has stopped changing: half of it
		// may parse, with secrets missing.
		data, err := policy.ReadSettled(ctx, path, policy.DefaultSettle)
		if ctx.Err() != nil {
			return
		}
		var s *secrets.Set
		if err == nil {
			s, err = secrets.LoadData(path, data)
		}
		if err != nil {
			if msg := err.Error(); msg != lastErr || why == "SIGHUP" {
				lastErr = msg
				logger.Error("secrets reload rejected; keeping the secrets in force", "file", path, "trigger", why, "err", err)
			}
			return
		}
		lastErr = ""
		if s.Equal(h.Load()) {
			return
		}
		h.Store(s)
		logger.Info("secrets reloaded", "file", path, "trigger", why, "secrets", len(s.Secrets()), "unavailable", len(s.Unresolved()))
		logUnresolved(s, logger)
		warnUnknownSecrets(pol.Load(), s, logger)
	})
}

// secretsHook puts the secrets into the pipeline: mutate is proxy.Server.Mutate, modifyResponse its
// ModifyResponse. Every forwarded request (plain HTTP, inspected, captured) goes through mutate, so a
// placeholder in a request whose rule does not list its secret is refused whatever the rule.
type secretsHook struct{ secrets *secrets.Holder }

// mutate binds the outgoing request to the secrets of the rule that allowed it and records the names
// of the secrets it put in.
func (k secretsHook) mutate(out *http.Request, req *proxy.Request) *proxy.Failure {
	d := req.Decision()
	var bound []string
	var inject []secrets.Injection
	if d.Allow && d.Rule != nil {
		bound, inject = d.Rule.Secrets, d.Rule.Inject
	}
	used, err := k.secrets.Load().Apply(out, bound, inject)
	var se *secrets.Error
	switch {
	case errors.As(err, &se) && se.Code == secrets.CodeNotBound:
		return &proxy.Failure{Status: http.StatusForbidden, Kind: accesslog.ErrorSecretNotBound, Denied: true, Rule: d.RuleID(),
			Reason: se.Reason, Fix: fmt.Sprintf("if this host should receive secret %q, add it to the secrets: of the rule that allows the host", se.Secret)}
	case err != nil:
		return &proxy.Failure{Status: http.StatusBadGateway, Kind: accesslog.ErrorSecretUnavailable, Rule: d.RuleID(), Reason: err.Error()}
	case len(used) > 0 && out.URL.Scheme != "https" && !slices.Contains(d.Rule.Ports, req.Target.Port):
		// A rule for every port would let an agent have the secret sent in clear by asking for
		// http:// instead of https://: plain HTTP carries a secret only to a port the rule names.
		return &proxy.Failure{Status: http.StatusForbidden, Kind: accesslog.ErrorSecretCleartext, Denied: true, Rule: d.RuleID(),
			Reason: fmt.Sprintf("secret %q would cross the network in clear: this request is plain http:// and rule %s does not list port %d", used[0], d.RuleID(), req.Target.Port),
			Fix:    fmt.Sprintf("send the request over https://; if the service speaks only plain HTTP, list the port on the rule (ports: [%d])", req.Target.Port)}
	}
	if len(used) > 0 {
		// Mutate runs again when the Transport retries the request; the names are merged.
		req.OnRecord(func(rec *accesslog.Record) {
			for _, n := range used {
				if !slices.Contains(rec.Secrets, n) {
					rec.Secrets = append(rec.Secrets, n)
				}
			}
			slices.Sort(rec.Secrets)
		})
	}
	return nil
}

// modifyResponse replaces a secret's value in the target's response headers, and in its trailers
// once the body has been read, before they reach the client.
func (k secretsHook) modifyResponse(resp *http.Response, _ *proxy.Request) error {
	set := k.secrets.Load()
	if set == nil {
		return nil
	}
	set.Redact(resp.Header)
	if resp.Body != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body = &redactTrailer{ReadCloser: resp.Body, set: set, resp: resp}
	}
	return nil
}

// redact replaces the secrets' values in text from a target (a Transport error).
func (k secretsHook) redact(text string) string { return k.secrets.Load().RedactString(text) }

// redactTrailer redacts the response's trailers when its body ends: the Transport fills them in then,
// and ReverseProxy copies them to the client after it has read the body.
type redactTrailer struct {
	io.ReadCloser
	set  *secrets.Set
	resp *http.Response
}

func (b *redactTrailer) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.set.Redact(b.resp.Trailer)
	}
	return n, err
}
