package tunnel

import (
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// TestRoundTripMeasuredOften checks that the multiplexer measures the connection's round trip again
// and again (every measureRTTInterval), not only when the connection starts: the round trip decides
// how far yamux lets a busy stream's window grow.
func TestRoundTripMeasuredOften(t *testing.T) {
	e := newEnv(t, true, Config{})
	e.provider("s1", "loopback", nil).waitConnected(t)
	var mux interface{ RTT() time.Duration }
	loopbacktest.Eventually(t, "the first round trip measured", func() bool {
		e.broker.mu.Lock()
		defer e.broker.mu.Unlock()
		if g := e.broker.sessions["s1"]; g != nil && len(g.providers) == 1 {
			mux = g.providers[0].mux
		}
		return mux != nil && mux.RTT() > 0
	})
	first := mux.RTT()
	loopbacktest.Eventually(t, "the round trip measured again", func() bool { return mux.RTT() != first })
}
