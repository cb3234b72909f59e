package proxy

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus collectors.
type Metrics struct {
	requests      *prometheus.CounterVec
	activeTunnels prometheus.Gauge
	bytes         *prometheus.CounterVec
	dialSeconds   prometheus.Histogram
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swarm_proxy_requests_total",
			Help: "Requests and tunnels handled, by policy decision and response status.",
		}, []string{"decision", "status"}),
		activeTunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "swarm_proxy_active_tunnels",
			Help: "CONNECT, SOCKS5 and upgraded tunnels currently open.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swarm_proxy_bytes_total",
			Help: "Bytes relayed: out is client to target, in is target to client.",
		}, []string{"direction"}),
		dialSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "swarm_proxy_upstream_dial_seconds",
			Help:    "Time to open an upstream connection, resolution included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	reg.MustRegister(m.requests, m.activeTunnels, m.bytes, m.dialSeconds)
	return m
}

func (m *Metrics) observe(decision string, status int, in, out int64) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(decision, strconv.Itoa(status)).Inc()
	m.bytes.WithLabelValues("in").Add(float64(in))
	m.bytes.WithLabelValues("out").Add(float64(out))
}

func (m *Metrics) tunnelDelta(d float64) {
	if m != nil {
		m.activeTunnels.Add(d)
	}
}

// ObserveDial records an upstream connect time; it is meant for dial.Direct.Observe.
func (m *Metrics) ObserveDial(d time.Duration) {
	if m != nil {
		m.dialSeconds.Observe(d.Seconds())
	}
}
