package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The capture route (Capture.Route). A redirected connection keeps the maximum segment size of
// the route its client dialed (the pod's way out, MTU 1500), where a connection to the proxy on
// loopback gets loopback's: every byte of a captured connection then crosses the kernel in far
// more segments. The kernel will not raise a segment size in flight (nftables and iptables only
// lower it), so the agent's users are given routes of their own with loopback's MTU. Nothing of
// theirs leaves by those routes: their TCP is redirected to the proxy, their DNS to the guard, and
// the rest is refused; the proxy's users keep the namespace's routes.
const (
	// RouteTable is the routing table of the capture route, and the preference of its rules.
	RouteTable = 21328
	// RouteMTU is the capture route's MTU: the largest the kernel keeps for a route.
	RouteMTU = 65520
	// maxUID is the largest user id (uid_t's -1 means none).
	maxUID = 1<<32 - 2
)

// validateRoute reports the problems of the capture route part of c.
func (c Config) validateRoute() []error {
	if c.Capture == nil || !c.Capture.Route {
		return nil
	}
	if len(c.Proxy) > 0 {
		return []error{errors.New("firewall: --capture-route cannot go with --proxy: the agent's own connections to that proxy would leave by the capture route, with segments too large for the link")}
	}
	return nil
}

// agentUIDRanges are the user id ranges of everyone but the AllowUIDs: the complement of that set.
func (c Config) agentUIDRanges() [][2]uint32 {
	uids := slices.Clone(c.AllowUIDs)
	slices.Sort(uids)
	uids = slices.Compact(uids)
	var rs [][2]uint32
	next := uint32(0)
	for _, u := range uids {
		if u > next {
			rs = append(rs, [2]uint32{next, u - 1})
		}
		next = u + 1
		if u >= maxUID {
			return rs
		}
	}
	return append(rs, [2]uint32{next, maxUID})
}

// applyRoute installs the capture route for IPv4 and IPv6: table RouteTable holds the default
// route's device with MTU RouteMTU, and rules of preference RouteTable send the agent's users to it.
// Rules left by an earlier run are deleted first, so applying again leaves one copy.
func (c Config) applyRoute(ctx context.Context, run Runner, report []string) ([]string, error) {
	if c.Capture == nil || !c.Capture.Route {
		return report, nil
	}
	table := strconv.Itoa(RouteTable)
	for _, fam := range []string{"-4", "-6"} {
		for range 64 { // rules of this preference from an earlier run; the bound is a guard
			if _, err := run(ctx, "", "ip", fam, "rule", "del", "pref", table); err != nil {
				break
			}
		}
		out, err := run(ctx, "", "ip", fam, "route", "show", "default")
		if err != nil {
			return report, fmt.Errorf("firewall: ip %s route show default: %w: %s", fam, err, strings.TrimSpace(out))
		}
		dev := defaultDevice(out)
		if dev == "" {
			report = append(report, fmt.Sprintf("ip %s: no default route, so no capture route (connections the agent cannot route are refused by the kernel before any redirect)", fam))
			continue
		}
		if out, err := run(ctx, "", "ip", fam, "route", "replace", "default", "dev", dev, "mtu", "lock", strconv.Itoa(RouteMTU), "table", table); err != nil {
			return report, fmt.Errorf("firewall: ip %s route replace ... table %s: %w: %s", fam, table, err, strings.TrimSpace(out))
		}
		ranges := c.agentUIDRanges()
		for _, r := range ranges {
			if out, err := run(ctx, "", "ip", fam, "rule", "add", "pref", table, "uidrange", fmt.Sprintf("%d-%d", r[0], r[1]), "lookup", table); err != nil {
				return report, fmt.Errorf("firewall: ip %s rule add: %w: %s", fam, err, strings.TrimSpace(out))
			}
		}
		report = append(report, fmt.Sprintf("ip %s: the agent's users (%d uid ranges, all but --allow-uid) route by table %s: default dev %s mtu lock %d, so captured connections get loopback-sized segments",
			fam, len(ranges), table, dev, RouteMTU))
	}
	return report, nil
}

// defaultDevice is the device of the first route in `ip route show default` output.
func defaultDevice(out string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}
