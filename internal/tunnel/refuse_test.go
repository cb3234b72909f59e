package tunnel

import (
	"context"
	"errors"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// TestBrokerRefusesUndecided: the broker's Dial refuses a request whose decision is not an allow
// (none made, or a denial) before it looks for a provider: without the check, this session with no
// provider would get no_provider instead.
func TestBrokerRefusesUndecided(t *testing.T) {
	e := newEnv(t, false, Config{})
	for _, d := range []policy.Decision{{}, {Code: policy.CodeDeniedByRule, Reason: "denied by rule deny#1"}} {
		r := req("s1", policy.Target{Host: "x.example", Port: 80})
		r.Decision = d
		c, err := e.broker.Dial(context.Background(), r)
		if err == nil {
			c.Close()
		}
		var de *dial.Error
		if !errors.As(err, &de) || de.Kind != dial.KindDenied {
			t.Fatalf("decision %+v: %v, want a refusal", d, err)
		}
	}
}
