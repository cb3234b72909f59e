package serve

import (
	"context"
	"sync"
)

// Tracker follows what a server has in flight (connections, tunnels) and the goroutines serving
// them: Shutdown refuses new ones, ends the idle ones at once, waits for the others and, when its
// context ends first, aborts them. The zero value is ready to use.
type Tracker struct {
	mu      sync.Mutex
	closing bool
	items   map[*Item]struct{}
	wg      sync.WaitGroup
}

// Item is one tracked thing. Abort ends it at once (a reset, where possible); it is called at most
// once, by Shutdown, and may run while the item's goroutine is still using it.
type Item struct {
	abort   func()
	idle    bool
	aborted bool
}

// Add starts tracking an item that abort ends. It returns nil once Shutdown has begun: the caller
// refuses the work.
func (t *Tracker) Add(abort func()) *Item {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return nil
	}
	if t.items == nil {
		t.items = map[*Item]struct{}{}
	}
	it := &Item{abort: abort}
	t.items[it] = struct{}{}
	t.wg.Add(1)
	return it
}

// Go tracks an item and runs serve for it on a new goroutine; it reports false, without running
// serve, once Shutdown has begun.
func (t *Tracker) Go(abort func(), serve func(*Item)) bool {
	it := t.Add(abort)
	if it == nil {
		return false
	}
	go func() {
		defer t.Done(it)
		serve(it)
	}()
	return true
}

// SetAbort replaces an item's abort function (a tunnel gains its upstream connection).
func (t *Tracker) SetAbort(it *Item, abort func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	it.abort = abort
}

// SetIdle marks an item as idle (waiting for a client that has sent nothing yet) or busy. An idle
// item is ended as soon as Shutdown begins. It reports false when Shutdown has begun: the caller
// stops.
func (t *Tracker) SetIdle(it *Item, idle bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	it.idle = idle
	return !t.closing
}

// Aborted reports whether Shutdown aborted the item because its time ran out.
func (t *Tracker) Aborted(it *Item) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return it.aborted
}

// Done stops tracking an item.
func (t *Tracker) Done(it *Item) {
	t.mu.Lock()
	delete(t.items, it)
	t.mu.Unlock()
	t.wg.Done()
}

// Shutdown refuses new items, ends the idle ones and waits for the others until ctx ends; then it
// aborts what is left, waits for its goroutines to finish and returns ctx's error.
func (t *Tracker) Shutdown(ctx context.Context) error {
	t.Refuse()
	return t.Wait(ctx)
}

// Refuse is the first half of Shutdown: from now on Add refuses, and idle items are ended.
func (t *Tracker) Refuse() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closing = true
	for it := range t.items {
		if it.idle {
			it.abort()
		}
	}
}

// Wait is the second half of Shutdown: it waits for the items until ctx ends, then aborts them.
func (t *Tracker) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	for it := range t.items {
		it.aborted = true
		it.abort()
	}
	t.mu.Unlock()
	<-done
	return ctx.Err()
}

// Len is the number of items tracked.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.items)
}
