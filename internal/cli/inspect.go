package cli

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

// inspectFlags are the HTTPS inspection flags of proxy and broker.
type inspectFlags struct {
	caCert, caKey, upstreamCA string
}

func (f *inspectFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.caCert, "ca-cert", "", "CA certificate for HTTPS inspection (swarm-proxy ca init); needed when a rule has http, access or inspect")
	fs.StringVar(&f.caKey, "ca-key", "", "private key of --ca-cert; refused when group or others may read it")
	fs.StringVar(&f.upstreamCA, "upstream-ca", "", "extra roots (PEM) for verifying the targets of inspected and https requests, besides the system's")
}

func (f *inspectFlags) validate() error {
	if (f.caCert == "") != (f.caKey == "") {
		return errors.New("--ca-cert and --ca-key go together")
	}
	return nil
}

// setup loads the CA and the upstream roots into srv, registering the leaf cache's metrics.
func (f *inspectFlags) setup(srv *proxy.Server, reg prometheus.Registerer) error {
	roots, err := inspect.UpstreamRoots(f.upstreamCA)
	if err != nil {
		return err
	}
	srv.UpstreamTLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if f.caCert == "" {
		return nil
	}
	ca, err := inspect.LoadCA(f.caCert, f.caKey, time.Now())
	if err != nil {
		return err
	}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "swarm_proxy_inspect_leaf_lookups_total",
		Help: "Leaf certificates asked for by inspected handshakes, by whether the cache had one.",
	}, []string{"result"})
	mint := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "swarm_proxy_inspect_leaf_mint_seconds",
		Help:    "Time to mint a leaf certificate (key generation and signing).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 12),
	})
	reg.MustRegister(lookups, mint)
	hit, miss := lookups.WithLabelValues("hit"), lookups.WithLabelValues("miss")
	srv.Inspector = &inspect.Minter{CA: ca, Observe: func(cached bool, d time.Duration) {
		if cached {
			hit.Inc()
			return
		}
		miss.Inc()
		mint.Observe(d.Seconds())
	}}
	return nil
}

// inspectionReady refuses a policy with rules that inspect when the proxy has no CA: such a rule
// would otherwise refuse every connection it allows.
func inspectionReady(p *policy.Policy, haveCA bool) error {
	if haveCA {
		return nil
	}
	for i := range p.Allow {
		if r := &p.Allow[i]; r.Inspects() {
			return fmt.Errorf("rule %s inspects HTTPS (http, access, inspect, inject or secrets): start the proxy with --ca-cert and --ca-key (swarm-proxy ca init, see docs/inspection.md)", r.Describe(p.Source))
		}
	}
	return nil
}
