package doctor

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Linux capability bits (linux/capability.h) that let an agent around the egress rules.
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// capabilityFix is how to start the agent without them.
const capabilityFix = "start the agent without them: docker run --cap-drop ALL (compose: cap_drop: [ALL], as in deploy/compose.yaml), " +
	"Kubernetes: securityContext.capabilities.drop: [ALL]; see docs/agents.md"

// checkCapabilities fails when the agent holds CAP_NET_RAW (raw packets and frames, which pass the
// firewall's rules: AF_PACKET skips the output hook) or CAP_NET_ADMIN (it can rewrite the rules),
// read from CapEff in /proc/self/status. Where there is no such file (not Linux) it says nothing.
func checkCapabilities(c Config, add func(Result)) {
	const check = "capabilities"
	data, err := c.ReadProcStatus()
	if err != nil {
		return
	}
	eff, ok := capEff(data)
	if !ok {
		add(Result{Warn, check, "no CapEff line in /proc/self/status: cannot tell whether the agent holds CAP_NET_RAW", capabilityFix})
		return
	}
	var held []string
	if eff&(1<<capNetRaw) != 0 {
		held = append(held, "CAP_NET_RAW (raw packets and frames pass the firewall's rules)")
	}
	if eff&(1<<capNetAdmin) != 0 {
		held = append(held, "CAP_NET_ADMIN (it can change or remove the firewall)")
	}
	if len(held) > 0 {
		add(Result{Fail, check, "the agent holds " + strings.Join(held, " and "), capabilityFix})
		return
	}
	add(Result{OK, check, fmt.Sprintf("neither CAP_NET_RAW nor CAP_NET_ADMIN (CapEff %016x)", eff), ""})
}

// capEff returns the effective capability set from the text of /proc/self/status.
func capEff(status []byte) (uint64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n, err == nil
		}
	}
	return 0, false
}
