package dnsguard

import (
	"net/netip"
	"sync"
	"time"
)

// Default bounds of a Cache.
const (
	// DefaultCacheEntries bounds the (client, name) pairs a cache keeps.
	DefaultCacheEntries = 1 << 16
	// maxAddrsPerName bounds the addresses remembered for one pair: an answer with more is cut.
	maxAddrsPerName = 32
)

// Cache remembers, per client, the addresses the guard gave it for each name, each until its TTL
// ends. The transparent listener asks it whether a connection's original destination is one that
// its claimed name was answered with. It is bounded: when full, expired pairs are dropped, then
// pairs at random. A nil *Cache remembers nothing.
type Cache struct {
	// Local, when set, reports whether an address is one of this machine's (hostaddr's Owns).
	// Clients at loopback or local addresses are one client: in a sidecar's shared network
	// namespace the source address of a query or connection depends on where it was sent
	// (a query to 127.0.0.11 comes from 127.0.0.1, a connection out from the pod's address), not
	// on who sent it.
	Local func(netip.Addr) bool

	mu      sync.Mutex
	entries map[cacheKey][]cachedAddr
	max     int
	now     func() time.Time
}

type cacheKey struct {
	client netip.Addr
	name   string
}

type cachedAddr struct {
	addr    netip.Addr
	expires time.Time
}

// NewCache returns a cache of at most max (client, name) pairs; max <= 0 means DefaultCacheEntries.
func NewCache(max int) *Cache {
	if max <= 0 {
		max = DefaultCacheEntries
	}
	return &Cache{entries: make(map[cacheKey][]cachedAddr), max: max, now: time.Now}
}

// Add remembers that client was given addrs for the normalised name, each valid for ttl.
func (c *Cache) Add(client netip.Addr, name string, addrs []netip.Addr, ttl time.Duration) {
	if c == nil || len(addrs) == 0 || ttl <= 0 {
		return
	}
	k := cacheKey{c.clientKey(client), name}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	expires := now.Add(ttl)
	list, ok := c.entries[k]
	if !ok && len(c.entries) >= c.max {
		c.evict(now)
	}
	live := list[:0]
	for _, e := range list {
		if e.expires.After(now) {
			live = append(live, e)
		}
	}
	list = live
next:
	for _, a := range addrs {
		a = a.Unmap()
		for i := range list {
			if list[i].addr == a {
				if expires.After(list[i].expires) {
					list[i].expires = expires
				}
				continue next
			}
		}
		if len(list) < maxAddrsPerName {
			list = append(list, cachedAddr{a, expires})
		}
	}
	c.entries[k] = list
}

// evict makes room: it drops every expired pair and, if the cache is still full, an eighth of the
// pairs picked at random, so that a client flooding the guard with names costs a scan per max/8
// queries, not one per query.
func (c *Cache) evict(now time.Time) {
	for k, list := range c.entries {
		if !expiresAfter(list, now) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) < c.max-c.max/8 {
			break
		}
		delete(c.entries, k)
	}
}

func expiresAfter(list []cachedAddr, t time.Time) bool {
	for _, e := range list {
		if e.expires.After(t) {
			return true
		}
	}
	return false
}

// Answered reports whether the guard gave client addr for the normalised name and its TTL has not
// ended.
func (c *Cache) Answered(client netip.Addr, name string, addr netip.Addr) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for _, e := range c.entries[cacheKey{c.clientKey(client), name}] {
		if e.addr == addr.Unmap() && e.expires.After(now) {
			return true
		}
	}
	return false
}

// clientKey is the key of a client: its address, or the loopback address for every local one.
func (c *Cache) clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.IsLoopback() || c.Local != nil && c.Local(a) {
		return netip.IPv6Loopback()
	}
	return a
}

// Len is the number of (client, name) pairs held, expired ones included until they are dropped.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
