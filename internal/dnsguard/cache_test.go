package dnsguard

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestCache(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewCache(3)
	c.now = func() time.Time { return now }
	agent, other := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	a4, a6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")
	c.Add(agent, "allowed.test", []netip.Addr{a4}, 30*time.Second)
	c.Add(agent, "allowed.test", []netip.Addr{a6}, 60*time.Second) // the AAAA query merges in
	check := func(what string, client netip.Addr, name string, a netip.Addr, want bool) {
		t.Helper()
		if got := c.Answered(client, name, a); got != want {
			t.Errorf("%s: Answered(%s, %s, %s) = %v, want %v", what, client, name, a, got, want)
		}
	}
	check("A answer", agent, "allowed.test", a4, true)
	check("AAAA answer", agent, "allowed.test", a6, true)
	check("IPv4-mapped form", agent, "allowed.test", netip.MustParseAddr("::ffff:192.0.2.7"), true)
	check("another client was not told", other, "allowed.test", a4, false)
	check("another name", agent, "other.test", a4, false)
	check("another address", agent, "allowed.test", netip.MustParseAddr("192.0.2.8"), false)
	now = now.Add(31 * time.Second)
	check("A after its TTL", agent, "allowed.test", a4, false)
	check("AAAA within its TTL", agent, "allowed.test", a6, true)

	// Full: expired pairs go first.
	c.Add(agent, "b.test", []netip.Addr{a4}, time.Second)
	c.Add(agent, "c.test", []netip.Addr{a4}, time.Hour)
	now = now.Add(40 * time.Second) // allowed.test and b.test have expired
	c.Add(agent, "d.test", []netip.Addr{a4}, 2*time.Hour)
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want 2", c.Len())
	}
	check("kept", agent, "c.test", a4, true)
	check("added", agent, "d.test", a4, true)

	var nilCache *Cache
	nilCache.Add(agent, "x", []netip.Addr{a4}, time.Hour)
	if nilCache.Answered(agent, "x", a4) {
		t.Error("a nil cache answered")
	}
}

func TestCacheBounded(t *testing.T) {
	c := NewCache(100)
	client := netip.MustParseAddr("10.0.0.1")
	many := make([]netip.Addr, 500)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
	}
	for i := range 1000 {
		c.Add(client, fmt.Sprintf("n%d.test", i), many, time.Hour)
	}
	if c.Len() > 100 {
		t.Fatalf("Len = %d, want at most 100", c.Len())
	}
	for _, list := range c.entries {
		if len(list) > maxAddrsPerName {
			t.Fatalf("%d addresses for one name, want at most %d", len(list), maxAddrsPerName)
		}
	}
}

// TestCacheLocalClients: in a shared network namespace a query to a loopback resolver comes from
// 127.0.0.1 and the connection that follows from the pod's address: they are the same client.
func TestCacheLocalClients(t *testing.T) {
	pod := netip.MustParseAddr("10.213.2.1")
	c := NewCache(0)
	c.Local = func(a netip.Addr) bool { return a == pod }
	a := netip.MustParseAddr("10.213.2.2")
	c.Add(netip.MustParseAddr("127.0.0.1"), "allowed.test", []netip.Addr{a}, time.Minute)
	for _, client := range []string{"10.213.2.1", "::1", "127.0.0.53", "::ffff:10.213.2.1"} {
		if !c.Answered(netip.MustParseAddr(client), "allowed.test", a) {
			t.Errorf("a local client %s does not share the answer given to 127.0.0.1", client)
		}
	}
	if c.Answered(netip.MustParseAddr("10.213.2.9"), "allowed.test", a) {
		t.Error("another machine's client shares a local client's answer")
	}
}
