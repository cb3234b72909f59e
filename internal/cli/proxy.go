package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/admin"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
	"github.com/swarm-proxy/swarm-proxy/internal/socks"
)

// frontendFlags are the flags shared by every command that runs the proxy front end (proxy, broker).
type frontendFlags struct {
	listen            string
	socksListen       string
	adminListen       string
	policyFile        string
	secretsFile       string
	logFile           string
	logMaxSizeMB      int
	logMaxBackups     int
	allowClients      []string
	shutdownTimeout   time.Duration
	dialTimeout       time.Duration
	upstreamTimeout   time.Duration
	idleTimeout       time.Duration
	headerTimeout     time.Duration
	tunnelIdleTimeout time.Duration
	policyPoll        time.Duration
	logLevel          string
	inspect           inspectFlags
	// capture holds the transparent capture and DNS guard flags of the proxy command; nil for the
	// broker, whose clients come with tickets.
	capture *captureFlags
}

func (f *frontendFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8080", "address for proxy clients (HTTP forward and CONNECT): HOST:PORT, :PORT for every interface, PORT for loopback")
	fs.StringVar(&f.socksListen, "socks-listen", "", "address for SOCKS5 clients, same policy and log as --listen (empty disables)")
	fs.StringVar(&f.adminListen, "admin-listen", "127.0.0.1:9090", "address for /healthz, /readyz and /metrics (empty disables)")
	fs.StringVar(&f.policyFile, "policy", "", "policy.yaml; without it: discovery mode, private and metadata addresses refused")
	fs.StringVar(&f.secretsFile, "secrets", "", "secrets file (YAML, mode 0600): values put into the requests of the rules that name them, reloaded like the policy; agents hold placeholders (see docs/secrets.md)")
	fs.StringVar(&f.logFile, "log-file", "", "access log file, rotated by size (default: stdout)")
	fs.IntVar(&f.logMaxSizeMB, "log-max-size", accesslog.DefaultRotation.MaxSizeMB, "rotate the access log at this many MB")
	fs.IntVar(&f.logMaxBackups, "log-max-backups", accesslog.DefaultRotation.MaxBackups, "rotated access logs to keep (gzip-compressed)")
	fs.StringSliceVar(&f.allowClients, "allow-clients", nil, "client CIDRs that may use the proxy (default: loopback and private ranges)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM/SIGINT, how long in-flight requests and tunnels may finish")
	fs.DurationVar(&f.dialTimeout, "dial-timeout", dial.DefaultTimeout, "bound on resolving and connecting to a target")
	fs.DurationVar(&f.upstreamTimeout, "upstream-timeout", proxy.DefaultUpstreamTimeout, "how long a target may take to send response headers (long polls wait that long)")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", proxy.DefaultIdleTimeout, "close kept-alive client connections idle this long")
	fs.DurationVar(&f.headerTimeout, "read-header-timeout", proxy.DefaultReadHeaderTimeout, "how long a client may take to send request headers")
	fs.DurationVar(&f.tunnelIdleTimeout, "tunnel-idle-timeout", 0, "end tunnels that moved no byte this long (0: never)")
	fs.DurationVar(&f.policyPoll, "policy-poll", 2*time.Second, "how often to check the policy file for changes (0: only on SIGHUP)")
	fs.StringVar(&f.logLevel, "log-level", "info", "operational log level on stderr: debug, info, warn, error")
	f.inspect.register(fs)
}

func (f *frontendFlags) validate() error {
	var errs []error
	if f.listen == "" {
		errs = append(errs, errors.New("--listen must not be empty"))
	}
	for _, l := range []struct {
		name string
		v    *string
	}{{"listen", &f.listen}, {"socks-listen", &f.socksListen}, {"admin-listen", &f.adminListen}} {
		addr, err := listenAddr(l.name, *l.v)
		if err != nil {
			errs = append(errs, err)
		}
		*l.v = addr
	}
	for _, c := range f.allowClients {
		if _, err := netip.ParsePrefix(c); err != nil {
			errs = append(errs, fmt.Errorf("--allow-clients: %q is not a CIDR like 10.0.0.0/8", c))
		}
	}
	if f.shutdownTimeout < 0 || f.dialTimeout <= 0 || f.upstreamTimeout <= 0 {
		errs = append(errs, errors.New("timeouts must be positive"))
	}
	if f.capture != nil {
		errs = append(errs, f.capture.validate()...)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %q is not debug, info, warn or error", f.logLevel))
	}
	if err := f.inspect.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func newProxyCmd() *cobra.Command {
	var f frontendFlags
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the egress proxy (HTTP forward and CONNECT) with a policy and a JSON access log",
		Long: `Run the egress proxy. Agents use it through HTTP_PROXY/HTTPS_PROXY. Every request and tunnel is
decided by the policy (discovery: log everything, block only what is denied; enforce: allow only
what an allow rule names) and written as one JSON line to the access log.`,
		Example: `  # discovery mode on 127.0.0.1:8080 (admin on 127.0.0.1:9090), the access log on stdout
  swarm-proxy proxy
  # enforce policy.yaml, the access log in a file rotated at 100 MB
  swarm-proxy proxy --policy policy.yaml --log-file access.log
  # in a container: every interface, SOCKS5 too (clients from private ranges only, see --allow-clients)
  swarm-proxy proxy --listen :8080 --socks-listen :1080 --admin-listen :9090 --policy policy.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return runFrontend(cmd.Context(), cmd, &f, func(rt *runtime) (dial.Dialer, proxy.Authenticator, error) {
				d, err := f.capture.dialer(&dial.Direct{Policy: rt.policy.Load, Timeout: f.dialTimeout, Observe: rt.metrics.ObserveDial})
				return d, nil, err
			})
		},
	}
	f.register(cmd.Flags())
	f.capture = &captureFlags{}
	f.capture.register(cmd.Flags())
	return cmd
}

// runtime is what a front-end command has built before it chooses its dialer.
type runtime struct {
	logger   *slog.Logger
	policy   *policy.Holder
	registry *prometheus.Registry
	metrics  *proxy.Metrics
	// health records the listeners that failed for good: /readyz fails while it holds any.
	health *serve.Health
	// onShutdown, when set, runs after the proxy listener stopped.
	onShutdown func(context.Context)
	// onServer, when set, runs once the proxy server exists, before it serves.
	onServer func(*proxy.Server)
}

// runFrontend runs the proxy front end until ctx ends: policy with reload, access log, admin
// endpoints, graceful shutdown. build supplies the dialer and authenticator.
func runFrontend(ctx context.Context, cmd *cobra.Command, f *frontendFlags, build func(*runtime) (dial.Dialer, proxy.Authenticator, error)) error {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(f.logLevel))
	logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))

	pol := policy.Default()
	if f.policyFile != "" {
		p, err := policy.Load(f.policyFile)
		if err != nil {
			return err
		}
		pol = p
	}
	if err := inspectionReady(pol, f.inspect.caCert != ""); err != nil {
		return err
	}
	sec, err := loadSecrets(f.secretsFile, logger)
	if err != nil {
		return err
	}
	warnUnknownSecrets(pol, sec.Load(), logger)
	rt := &runtime{logger: logger, policy: policy.NewHolder(pol), registry: admin.NewRegistry(), health: &serve.Health{}}
	rt.metrics = proxy.NewMetrics(rt.registry)
	logw, err := openAccessLog(cmd, f)
	if err != nil {
		return err
	}
	defer logw.Close()

	dialer, auth, err := build(rt)
	if err != nil {
		return err
	}
	var allow []netip.Prefix
	for _, c := range f.allowClients {
		allow = append(allow, netip.MustParsePrefix(c))
	}
	srv := &proxy.Server{
		Policy: rt.policy, Dialer: dialer, Auth: auth, Log: logw, Metrics: rt.metrics, Logger: logger,
		AllowClients: allow, UpstreamTimeout: f.upstreamTimeout, IdleTimeout: f.idleTimeout,
		TunnelIdleTimeout: f.tunnelIdleTimeout, ReadHeaderTimeout: f.headerTimeout,
		Mutate: secretsHook{sec}.mutate, ModifyResponse: secretsHook{sec}.modifyResponse, Redact: secretsHook{sec}.redact,
		Health: rt.health,
	}
	if err := f.inspect.setup(srv, rt.registry); err != nil {
		return err
	}
	if rt.onServer != nil {
		rt.onServer(srv)
	}

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("proxy listen: %w", err)
	}
	var socksSrv *socks.Server
	var socksLn net.Listener
	if f.socksListen != "" {
		if socksLn, err = net.Listen("tcp", f.socksListen); err != nil {
			ln.Close()
			return fmt.Errorf("socks listen: %w", err)
		}
		socksSrv = &socks.Server{Proxy: srv, Logger: logger, HandshakeTimeout: f.headerTimeout, Health: rt.health}
	}
	cp := &capture{}
	if f.capture != nil {
		if cp, err = startCapture(f.capture, srv, rt.policy, logw, logger); err != nil {
			ln.Close()
			if socksLn != nil {
				socksLn.Close()
			}
			return err
		}
	}
	adminSrv, adminAddr, err := startAdmin(ctx, f.adminListen, rt)
	if err != nil {
		ln.Close()
		if socksLn != nil {
			socksLn.Close()
		}
		cp.close()
		return err
	}

	reloadCtx, stopReload := context.WithCancel(ctx)
	defer stopReload()
	if f.policyFile != "" {
		haveCA := f.inspect.caCert != ""
		go watchPolicy(reloadCtx, f.policyFile, f.policyPoll, rt.policy, func(p *policy.Policy) error { return inspectionReady(p, haveCA) }, func() {
			srv.PolicyChanged()
			warnUnknownSecrets(rt.policy.Load(), sec.Load(), logger)
		}, logger)
	}
	if f.secretsFile != "" {
		go watchSecrets(reloadCtx, f.secretsFile, f.policyPoll, sec, rt.policy, logger)
	}

	serveErr := make(chan error, 4)
	go func() { serveErr <- srv.Serve(ln) }()
	socksAddr := ""
	if socksSrv != nil {
		socksAddr = socksLn.Addr().String()
		go func() { serveErr <- socksSrv.Serve(socksLn) }()
	}
	attrs := []any{"addr", ln.Addr().String()}
	if socksAddr != "" {
		attrs = append(attrs, "socks", socksAddr)
	}
	cp.serve(serveErr)
	attrs = append(attrs, cp.attrs()...)
	attrs = append(attrs, "admin", adminAddr, "mode", pol.Mode, "policy", orBuiltIn(f.policyFile))
	if f.secretsFile != "" {
		attrs = append(attrs, "secrets", f.secretsFile)
	}
	logger.Info("proxy listening", attrs...)

	select {
	case err := <-serveErr:
		return fmt.Errorf("proxy serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down", "timeout", f.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	socksDone := make(chan struct{})
	go func() {
		defer close(socksDone)
		if socksSrv != nil {
			socksSrv.Shutdown(sctx) // concurrently, so both front ends stop accepting at once
		}
		cp.shutdown(sctx)
	}()
	err = srv.Shutdown(sctx)
	<-socksDone
	if rt.onShutdown != nil {
		rt.onShutdown(sctx)
	}
	if adminSrv != nil {
		adminSrv.Shutdown(sctx)
	}
	if err != nil {
		logger.Warn("shutdown timeout reached: open tunnels were aborted", "err", err)
	}
	logger.Info("stopped")
	return nil
}

// openAccessLog opens the access log: stdout, or --log-file rotated by size.
func openAccessLog(cmd *cobra.Command, f *frontendFlags) (*accesslog.Writer, error) {
	if f.logFile == "" {
		return accesslog.NewWriter(cmd.OutOrStdout()), nil
	}
	return accesslog.OpenFile(f.logFile, accesslog.Rotation{MaxSizeMB: f.logMaxSizeMB, MaxBackups: f.logMaxBackups, Compress: true})
}

// startAdmin serves /healthz, /readyz and /metrics on addr (nothing when addr is empty). /readyz
// fails once ctx ends (shutdown: load balancers stop sending new clients) and while a listener is
// gone for good.
func startAdmin(ctx context.Context, addr string, rt *runtime) (*http.Server, string, error) {
	if addr == "" {
		return nil, "", nil
	}
	aln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("admin listen: %w", err)
	}
	ready := func() error {
		if ctx.Err() != nil {
			return errors.New("shutting down")
		}
		return rt.health.Err()
	}
	srv := &http.Server{Handler: admin.Handler(rt.registry, ready), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(aln)
	return srv, aln.Addr().String(), nil
}

func orBuiltIn(file string) string {
	if file == "" {
		return "(built-in discovery default)"
	}
	return file
}

// watchPolicy reloads the policy on SIGHUP and when the file's content changes, once the file has
// stopped changing (policy.ReadSettled). A file that does not load is reported and the policy in
// force stays. check may refuse a policy that parses but cannot be served (a rule that inspects
// without a CA).
func watchPolicy(ctx context.Context, path string, poll time.Duration, h *policy.Holder, check func(*policy.Policy) error, changed func(), logger *slog.Logger) {
	last, _ := os.ReadFile(path)
	onReload(ctx, poll, "file changed", func(why string) {
		// A file being rewritten in place is taken only once it has stopped changing.
		data, err := policy.ReadSettled(ctx, path, policy.DefaultSettle)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			logger.Error("policy reload failed; keeping the policy in force", "file", path, "trigger", why, "err", err)
			return
		}
		if why == "file changed" && string(data) == string(last) {
			return
		}
		last = data
		p, err := policy.Parse(path, data)
		if err == nil && check != nil {
			err = check(p)
		}
		if err != nil {
			logger.Error("policy reload rejected; keeping the policy in force", "file", path, "trigger", why, "err", err)
			return
		}
		h.Store(p)
		changed()
		logger.Info("policy reloaded", "file", path, "trigger", why, "mode", p.Mode, "allow", len(p.Allow), "deny", len(p.Deny))
	})
}

// onReload calls reload with "SIGHUP" on every SIGHUP and with pollTrigger every poll (never when
// poll is 0), one call at a time, until ctx ends.
func onReload(ctx context.Context, poll time.Duration, pollTrigger string, reload func(trigger string)) {
	hup := notifyHangup()
	defer stopHangup(hup)
	var tick <-chan time.Time
	if poll > 0 {
		t := time.NewTicker(poll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			reload("SIGHUP")
		case <-tick:
			reload(pollTrigger)
		}
	}
}
