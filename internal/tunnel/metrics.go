package tunnel

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the broker's tunnel collectors. A nil *Metrics records nothing.
type Metrics struct {
	providers  *prometheus.GaugeVec
	streams    *prometheus.GaugeVec
	opens      *prometheus.CounterVec
	handshakes *prometheus.CounterVec
	refused    prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		providers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "swarm_proxy_tunnel_providers",
			Help: "Providers connected, by session.",
		}, []string{"session"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "swarm_proxy_tunnel_streams",
			Help: "Streams open through providers, by session.",
		}, []string{"session"}),
		opens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swarm_proxy_tunnel_opens_total",
			Help: "Stream opens, by result: ok, or the failure kind (no_provider, timeout, denied, refused, ...).",
		}, []string{"result"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swarm_proxy_tunnel_handshakes_total",
			Help: "Provider handshakes, by result: ok, or the refusal code.",
		}, []string{"result"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "swarm_proxy_tunnel_provider_streams_refused_total",
			Help: "Streams providers tried to open towards the broker, which they may not: each was reset unread.",
		}),
	}
	reg.MustRegister(m.providers, m.streams, m.opens, m.handshakes, m.refused)
	return m
}

func (m *Metrics) providerDelta(session string, d float64) {
	if m != nil {
		m.providers.WithLabelValues(session).Add(d)
	}
}

func (m *Metrics) streamDelta(session string, d float64) {
	if m != nil {
		m.streams.WithLabelValues(session).Add(d)
	}
}

// forget drops a session's series once it has no provider and no stream.
func (m *Metrics) forget(session string) {
	if m != nil {
		m.providers.DeleteLabelValues(session)
		m.streams.DeleteLabelValues(session)
	}
}

func (m *Metrics) open(result string) {
	if m != nil {
		m.opens.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) handshake(result string) {
	if m != nil {
		m.handshakes.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) refusedStream() {
	if m != nil {
		m.refused.Inc()
	}
}
