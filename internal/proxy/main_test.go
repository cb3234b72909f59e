package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind (relays, transports, servers).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
