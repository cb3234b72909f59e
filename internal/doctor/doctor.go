// Package doctor checks, from inside an agent's environment, what the agent will actually do with
// its proxy settings: whether the proxy variables are present and well-formed, whether the proxy
// answers and is healthy, whether requests through it are allowed or blocked as the policy says, and
// which installed tools will honour the variables, whether a tool that ignores them is captured
// by swarm-proxy's transparent listener, and whether the agent holds the capabilities that get
// around the firewall (CAP_NET_RAW, CAP_NET_ADMIN). Each check yields one Result with a fix.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Status is the outcome of a check.
type Status string

// Outcomes, from good to bad.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is the outcome of one check, with what to do about it when it is not ok.
type Result struct {
	Status  Status
	Check   string
	Message string
	Fix     string
}

// String is the one-line form doctor prints.
func (r Result) String() string {
	s := fmt.Sprintf("%-4s  %s: %s", r.Status, r.Check, r.Message)
	if r.Fix != "" && r.Status != OK {
		s += " — fix: " + r.Fix
	}
	return s
}

// Expectation is what a test request through the proxy should meet.
type Expectation string

// Expectations of Config.Expect.
const (
	ExpectAny   Expectation = ""
	ExpectAllow Expectation = "allow"
	ExpectDeny  Expectation = "deny"
)

// DefaultAdminPort is where the proxy's admin endpoints listen unless configured otherwise.
const DefaultAdminPort = "9090"

// DefaultTimeout bounds each network check.
const DefaultTimeout = 5 * time.Second

// Config says what to check. Zero values mean: the proxy from the environment, the admin endpoint
// derived from it, no test request but a probe, and the real environment, PATH and processes.
type Config struct {
	// Proxy is the proxy the agent is meant to use; empty means the one in HTTPS_PROXY/HTTP_PROXY.
	Proxy string
	// Admin is the proxy's health URL; empty derives http://PROXYHOST:9090/healthz and only warns
	// when it does not answer (agents often may not reach the admin port).
	Admin string
	// URLs are requested through the proxy; their outcome is compared with Expect.
	URLs []string
	// Expect is what every request in URLs should meet.
	Expect Expectation
	// Timeout bounds each network check; zero means DefaultTimeout.
	Timeout time.Duration
	// CA is the HTTPS inspection CA certificate whose trust by curl, Python, Node and git is checked;
	// empty means NODE_EXTRA_CA_CERTS, and no trust check when that is unset too.
	CA string

	// LookupEnv reads a variable; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// LookPath finds a tool; nil means exec.LookPath.
	LookPath func(string) (string, error)
	// Output runs a tool and returns its standard output; nil runs the process.
	Output func(ctx context.Context, name string, args ...string) (string, error)
	// CaptureProbe is where the capture check connects directly; empty means DefaultCaptureProbe.
	CaptureProbe string
	// DialDirect makes the capture check's direct connection; nil means a net.Dialer.
	DialDirect func(ctx context.Context, network, addr string) (net.Conn, error)
	// ReadProcStatus returns the text of /proc/self/status, for the capability check; nil reads it.
	ReadProcStatus func() ([]byte, error)
}

func (c *Config) defaults() {
	if c.LookupEnv == nil {
		c.LookupEnv = os.LookupEnv
	}
	if c.LookPath == nil {
		c.LookPath = exec.LookPath
	}
	if c.Output == nil {
		c.Output = func(ctx context.Context, name string, args ...string) (string, error) {
			out, err := exec.CommandContext(ctx, name, args...).Output()
			return string(out), err
		}
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.ReadProcStatus == nil {
		c.ReadProcStatus = func() ([]byte, error) { return os.ReadFile("/proc/self/status") }
	}
}

// Failed reports whether any result failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// Run runs every check and returns the results in order; emit, when set, gets each as it is known.
func Run(ctx context.Context, c Config, emit func(Result)) []Result {
	c.defaults()
	var out []Result
	add := func(r Result) {
		out = append(out, r)
		if emit != nil {
			emit(r)
		}
	}
	env := func(name string) string { v, _ := c.LookupEnv(name); return v }

	proxy := checkVariables(c, env, add)
	checkNoProxy(env, add)
	if proxy != nil {
		if checkReachable(ctx, c, proxy, add) {
			checkHealth(ctx, c, proxy, add)
			checkRequests(ctx, c, proxy, add)
		}
	}
	checkTools(ctx, c, env, add)
	checkTrust(ctx, c, env, add)
	checkCapture(ctx, c, add)
	checkCapabilities(c, add)
	return out
}

// checkVariables checks the proxy variables, one result per pair of spellings, and returns the proxy
// URL the checks that follow use.
func checkVariables(c Config, env func(string) string, add func(Result)) *url.URL {
	const fix = `eval "$(swarm-proxy env --proxy URL)" before starting the agent (or --format dockerfile/compose for images)`
	var chosen *url.URL
	for _, names := range [][2]string{{"HTTP_PROXY", "http_proxy"}, {"HTTPS_PROXY", "https_proxy"}} {
		upper, lower := env(names[0]), env(names[1])
		check := names[0] + "/" + names[1]
		if upper == "" && lower == "" {
			add(Result{Fail, check, "not set: tools connect directly (and the firewall, if applied, refuses them)", fix})
			continue
		}
		v := firstNonEmpty(lower, upper)
		u, err := parseProxyURL(v)
		if err != nil {
			add(Result{Fail, check, err.Error(), fix})
			continue
		}
		if c.Proxy != "" {
			want, err := parseProxyURL(c.Proxy)
			if err == nil && want.Host != u.Host {
				add(Result{Fail, check, fmt.Sprintf("points to %s, not to the proxy %s given with --proxy", u.Host, want.Host), fix})
				continue
			}
		}
		switch {
		case upper != "" && lower != "" && upper != lower:
			add(Result{Warn, check, fmt.Sprintf("differ (%s vs %s): which one a tool uses depends on the tool", redact(upper), redact(lower)), "set both to the same URL: " + fix})
		case lower == "" && names[1] == "http_proxy":
			add(Result{Warn, check, fmt.Sprintf("only HTTP_PROXY is set (%s): curl and git read only the lowercase http_proxy", redact(v)), "set http_proxy too: " + fix})
		case lower == "":
			add(Result{Warn, check, fmt.Sprintf("only %s is set (%s): some tools read only %s", names[0], redact(v), names[1]), "set both: " + fix})
		case upper == "":
			add(Result{Warn, check, fmt.Sprintf("only %s is set (%s): some tools read only %s", names[1], redact(v), names[0]), "set both: " + fix})
		default:
			add(Result{OK, check, redact(v), ""})
		}
		if chosen == nil || names[0] == "HTTPS_PROXY" {
			chosen = u
		}
	}
	if v := firstNonEmpty(env("all_proxy"), env("ALL_PROXY")); v != "" {
		if _, err := parseProxyURL(v); err != nil {
			add(Result{Fail, "ALL_PROXY/all_proxy", err.Error(), "set it to socks5h://HOST:PORT of the proxy's SOCKS5 listener, or unset it"})
		} else {
			add(Result{OK, "ALL_PROXY/all_proxy", redact(v) + " (used by curl and git for protocols without a variable of their own)", ""})
		}
	}
	if c.Proxy != "" {
		u, err := parseProxyURL(c.Proxy)
		if err != nil {
			add(Result{Fail, "--proxy", err.Error(), "give the proxy as http://HOST:PORT"})
			return nil
		}
		if chosen != nil && chosen.User != nil && u.User == nil {
			u.User = chosen.User // the variables carry the broker credentials
		}
		return u
	}
	return chosen
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// parseProxyURL parses a proxy variable the way Go and curl do: a bare host:port means http.
func parseProxyURL(v string) (*url.URL, error) {
	raw := v
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: %w", redact(v), err)
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("%q: scheme %q is not http, https, socks5 or socks5h", redact(v), u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%q has no host", redact(v))
	}
	if u.Port() == "" {
		return nil, fmt.Errorf("%q has no port (tools disagree on the default: curl uses 1080, Go 80)", redact(v))
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("%q: port %q is not 1-65535", redact(v), u.Port())
	}
	return u, nil
}

// redact hides the password (the broker token) of a proxy URL.
func redact(v string) string {
	if u, err := url.Parse(v); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return u.Redacted()
		}
	}
	return v
}

func checkNoProxy(env func(string) string, add func(Result)) {
	upper, lower := env("NO_PROXY"), env("no_proxy")
	r := noProxyResult(firstNonEmpty(lower, upper))
	if upper != "" && lower != "" && upper != lower && r.Status != Fail {
		// One line for the check: the mismatch, and what is wrong with the lowercase list, if anything.
		msg, fix := fmt.Sprintf("differ (%q vs %q)", upper, lower), "set both to the same list"
		if r.Status == Warn {
			msg, fix = msg+"; no_proxy: "+r.Message, fix+"; "+r.Fix
		}
		r = Result{Warn, r.Check, msg, fix}
	}
	add(r)
}

// noProxyResult judges one NO_PROXY list.
func noProxyResult(v string) Result {
	const check = "NO_PROXY/no_proxy"
	if v == "" {
		return Result{Warn, check, "not set: requests to localhost go to the proxy, which refuses loopback targets", "NO_PROXY=localhost,127.0.0.1,::1 (swarm-proxy env sets it)"}
	}
	var bypass, cidrs []string
	loopback := false
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
		case e == "*":
			return Result{Fail, check, `"*" sends every request around the proxy`, "remove * from NO_PROXY"}
		case e == "localhost" || e == "127.0.0.1" || e == "::1" || e == "[::1]":
			loopback = true
		default:
			if _, err := netip.ParsePrefix(e); err == nil && strings.Contains(e, "/") {
				cidrs = append(cidrs, e)
			}
			bypass = append(bypass, e)
		}
	}
	switch {
	case len(bypass) > 0:
		msg := fmt.Sprintf("%s bypass the proxy (not logged, and refused if the firewall is applied)", strings.Join(bypass, ", "))
		if len(cidrs) > 0 {
			msg += "; CIDR entries are ignored by Python's urllib and curl before 7.86"
		}
		return Result{Warn, check, msg, "keep only hosts the agent must reach without the proxy"}
	case !loopback:
		return Result{Warn, check, "does not list localhost: local services go to the proxy", "add localhost,127.0.0.1,::1"}
	default:
		return Result{OK, check, v, ""}
	}
}

func checkReachable(ctx context.Context, c Config, proxy *url.URL, add func(Result)) bool {
	d := net.Dialer{Timeout: c.Timeout}
	conn, err := d.DialContext(ctx, "tcp", proxy.Host)
	if err != nil {
		add(Result{Fail, "proxy reachable", fmt.Sprintf("%s: %v", proxy.Host, unwrapOp(err)), "start the proxy, check the address, and that the firewall allows it (swarm-proxy firewall --proxy " + proxy.Host + ")"})
		return false
	}
	conn.Close()
	add(Result{OK, "proxy reachable", "TCP connection to " + proxy.Host, ""})
	return true
}

// unwrapOp drops Go's "dial tcp ADDR:" prefix, keeping the system error.
func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

func checkHealth(ctx context.Context, c Config, proxy *url.URL, add func(Result)) {
	healthURL, derived := c.Admin, false
	if healthURL == "" {
		healthURL, derived = "http://"+net.JoinHostPort(proxy.Hostname(), DefaultAdminPort)+"/healthz", true
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, healthURL, nil)
	if err != nil {
		add(Result{Fail, "proxy health", err.Error(), "give --admin as http://HOST:PORT/healthz"})
		return
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err == nil {
		defer resp.Body.Close()
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		if resp.StatusCode == http.StatusOK {
			add(Result{OK, "proxy health", healthURL + " answers 200", ""})
			return
		}
		err = fmt.Errorf("answers %s", resp.Status)
	}
	if derived {
		add(Result{Warn, "proxy health", fmt.Sprintf("%s (guessed from the proxy address): %v", healthURL, unwrapOp(err)), "pass --admin URL if the admin endpoint is reachable from here; agents often may not reach it, which is fine"})
		return
	}
	add(Result{Fail, "proxy health", fmt.Sprintf("%s: %v", healthURL, unwrapOp(err)), "see the proxy's stderr; /healthz fails when the proxy cannot serve"})
}

// probeURL is requested when no --url is given: the proxy should refuse or fail it and say so in its
// own header, which shows that swarm-proxy (and not something else) is listening.
const probeURL = "http://doctor-probe.swarm-proxy.invalid/"

// Outcome is what happened to a request through the proxy.
type Outcome struct {
	Allowed  bool   // the proxy passed the request on (CONNECT established or upstream answered)
	Status   int    // HTTP status of the response (for CONNECT: of the CONNECT)
	Decision string // the X-Swarm-Proxy-Decision header, set when the policy denied it
	Error    string // the X-Swarm-Proxy-Error header, set when the proxy could not reach the target
	Other    error  // a failure after the proxy let it through (TLS, upstream), or before it answered
}

// HeaderDecision and HeaderError are the headers swarm-proxy sets on the responses it writes itself.
const (
	HeaderDecision = "X-Swarm-Proxy-Decision"
	HeaderError    = "X-Swarm-Proxy-Error"
)

// Request sends GET target through proxy and reports what the proxy decided.
func Request(ctx context.Context, proxy *url.URL, target string, timeout time.Duration) Outcome {
	var o Outcome
	connectSeen := false
	tr := &http.Transport{
		Proxy: http.ProxyURL(proxy),
		OnProxyConnectResponse: func(_ context.Context, _ *url.URL, _ *http.Request, resp *http.Response) error {
			connectSeen = true
			o.Status = resp.StatusCode
			o.Decision, o.Error = resp.Header.Get(HeaderDecision), resp.Header.Get(HeaderError)
			o.Allowed = resp.StatusCode == http.StatusOK
			return nil
		},
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		o.Other = err
		return o
	}
	resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}).Do(req)
	if err != nil {
		if !connectSeen || o.Allowed {
			o.Other = err
		}
		return o
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if connectSeen {
		return o // the CONNECT was allowed; resp is the target's
	}
	o.Status = resp.StatusCode
	o.Decision, o.Error = resp.Header.Get(HeaderDecision), resp.Header.Get(HeaderError)
	o.Allowed = o.Decision == "" && o.Error == ""
	return o
}

func checkRequests(ctx context.Context, c Config, proxy *url.URL, add func(Result)) {
	if len(c.URLs) == 0 {
		o := Request(ctx, proxy, probeURL, c.Timeout)
		switch {
		case o.Decision != "" || o.Error != "":
			add(Result{OK, "proxy identity", fmt.Sprintf("swarm-proxy answered a probe for an unresolvable host (%d)", o.Status), ""})
		case o.Other != nil:
			add(Result{Fail, "proxy identity", fmt.Sprintf("probe request failed: %v", o.Other), "check the proxy URL; the proxy should answer HTTP"})
		default:
			add(Result{Warn, "proxy identity", fmt.Sprintf("the proxy answered %d without swarm-proxy's headers: is it another proxy?", o.Status), "point the variables at swarm-proxy"})
		}
		return
	}
	for _, target := range c.URLs {
		o := Request(ctx, proxy, target, c.Timeout)
		check := "request " + target
		var what string
		switch {
		case o.Decision != "":
			what = "blocked by policy: " + o.Decision
		case o.Error != "":
			what = fmt.Sprintf("allowed by policy, but the proxy could not reach it (%d): %s", o.Status, o.Error)
		case o.Other != nil && o.Allowed:
			what = fmt.Sprintf("passed by the proxy, then failed: %v", o.Other)
		case o.Other != nil:
			add(Result{Fail, check, fmt.Sprintf("no answer from the proxy: %v", o.Other), "check the proxy address and that it is running"})
			continue
		default:
			what = fmt.Sprintf("allowed (%d)", o.Status)
		}
		denied := o.Decision != ""
		switch {
		case c.Expect == ExpectAllow && denied:
			add(Result{Fail, check, what + ", expected allowed", "add an allow rule for this host to the policy (the proxy's 403 body names it), or run in discovery mode"})
		case c.Expect == ExpectDeny && !denied:
			add(Result{Fail, check, what + ", expected blocked", "run the proxy in enforce mode with a policy that does not allow this host"})
		case o.Error != "" || o.Other != nil:
			add(Result{Warn, check, what, "the policy lets it through: check that the target is up, resolvable from the proxy and, for https, trusted here (SSL_CERT_FILE)"})
		default:
			add(Result{OK, check, what, ""})
		}
	}
}

var versionRE = regexp.MustCompile(`v?(\d+)\.(\d+)`)

// nodeHonoursEnvProxy reports whether a Node.js version reads the proxy variables when
// NODE_USE_ENV_PROXY=1 (22.21 and 24.5 onwards, for fetch and the http module).
func nodeHonoursEnvProxy(version string) (bool, bool) {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return false, false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major > 24 || major == 24 && minor >= 5 || major == 22 && minor >= 21, true
}

func checkTools(ctx context.Context, c Config, env func(string) string, add func(Result)) {
	run := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(ctx, c.Timeout)
		defer cancel()
		out, _ := c.Output(ctx, name, args...)
		return strings.TrimSpace(out)
	}
	for _, tool := range []string{"curl", "git", "npm", "pip", "node", "python3", "go"} {
		bin := tool
		if _, err := c.LookPath(bin); err != nil && tool == "pip" {
			bin = "pip3"
		}
		if _, err := c.LookPath(bin); err != nil {
			add(Result{OK, "tool " + tool, "not installed", ""})
			continue
		}
		check := "tool " + tool
		switch tool {
		case "curl":
			if env("http_proxy") == "" && env("HTTP_PROXY") != "" {
				add(Result{Warn, check, "ignores HTTP_PROXY (uppercase) for http:// URLs; http_proxy is not set", "set http_proxy too (swarm-proxy env does)"})
				continue
			}
			add(Result{OK, check, "reads http_proxy, HTTPS_PROXY/https_proxy, ALL_PROXY and NO_PROXY", ""})
		case "git":
			if v := run(bin, "config", "--get-regexp", `^https?\..*proxy$`); v != "" {
				add(Result{Warn, check, "git config overrides the variables: " + strings.ReplaceAll(v, "\n", "; "), "git config --global --unset http.proxy (or set it to the swarm-proxy URL)"})
				continue
			}
			// git's HTTP transport is libcurl, which like curl ignores the uppercase HTTP_PROXY.
			if env("http_proxy") == "" && env("HTTP_PROXY") != "" {
				add(Result{Warn, check, "ignores HTTP_PROXY (uppercase) for http:// remotes, as libcurl does; http_proxy is not set", "set http_proxy too (swarm-proxy env does)"})
				continue
			}
			add(Result{OK, check, "http(s):// remotes use http_proxy/https_proxy via libcurl; ssh:// remotes do not", "for SSH remotes see docs/agents.md (ProxyCommand)"})
		case "npm":
			out := run(bin, "config", "get", "proxy", "https-proxy", "noproxy")
			var bad []string
			want := firstNonEmpty(env("HTTPS_PROXY"), env("https_proxy"), env("HTTP_PROXY"), env("http_proxy"))
			for _, line := range strings.Split(out, "\n") {
				k, v, ok := strings.Cut(line, "=")
				if !ok || v == "" || v == "null" || k == "noproxy" {
					continue
				}
				if !sameProxy(v, want) {
					bad = append(bad, line)
				}
			}
			if len(bad) > 0 {
				add(Result{Warn, check, "npm config overrides the variables: " + strings.Join(bad, "; "), "npm config delete proxy; npm config delete https-proxy"})
				continue
			}
			add(Result{OK, check, "reads HTTPS_PROXY/HTTP_PROXY and NO_PROXY (unless .npmrc sets proxy)", ""})
		case "pip":
			if v := env("PIP_PROXY"); v != "" && !sameProxy(v, firstNonEmpty(env("HTTPS_PROXY"), env("https_proxy"))) {
				add(Result{Warn, check, "PIP_PROXY overrides the variables: " + redact(v), "unset PIP_PROXY"})
				continue
			}
			if v := run(bin, "config", "list"); strings.Contains(v, ".proxy=") {
				add(Result{Warn, check, "pip.conf sets a proxy: " + redact(v), "pip config unset global.proxy"})
				continue
			}
			add(Result{OK, check, "reads HTTP(S)_PROXY and NO_PROXY (through requests)", ""})
		case "node":
			v := run(bin, "--version")
			supported, known := nodeHonoursEnvProxy(v)
			switch {
			case !known:
				add(Result{Warn, check, fmt.Sprintf("cannot tell the version (%q)", v), "check node --version"})
			case !supported:
				add(Result{Warn, check, v + " ignores the proxy variables (fetch and http connect directly)", "use Node 24.5+ or 22.21+ with NODE_USE_ENV_PROXY=1, or undici's EnvHttpProxyAgent/setGlobalDispatcher in the agent"})
			case env("NODE_USE_ENV_PROXY") != "1":
				add(Result{Warn, check, v + " reads the variables only with NODE_USE_ENV_PROXY=1, which is not set", "export NODE_USE_ENV_PROXY=1 (swarm-proxy env does)"})
			default:
				add(Result{OK, check, v + " with NODE_USE_ENV_PROXY=1: fetch and http use the variables", ""})
			}
		case "python3":
			add(Result{OK, check, "urllib and requests read the variables (urllib ignores CIDRs in no_proxy)", ""})
		case "go":
			add(Result{OK, check, "net/http (ProxyFromEnvironment) and the go command read HTTP(S)_PROXY and NO_PROXY; requests to localhost are never proxied", ""})
		}
	}
}

// sameProxy reports whether two proxy URLs name the same host and port.
func sameProxy(a, b string) bool {
	ua, err1 := parseProxyURL(a)
	ub, err2 := parseProxyURL(b)
	return err1 == nil && err2 == nil && ua.Host == ub.Host
}
