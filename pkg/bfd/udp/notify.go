package udp

import (
	"context"
	"net/netip"
	"sync"

	"github.com/heraldlb/herald/pkg/bfd"
)

// maxPending bounds the changes waiting for one peer's OnChange; past it they coalesce.
const maxPending = 8

// notifier hands changes to OnChange off the Manager's goroutine: each peer's changes in
// order, on a worker of that peer's own that runs while it has changes to deliver. A slow
// OnChange (a BGP reset waiting for the BGP server's lock) delays only its own peer's
// later changes, never a session's packets or timers, nor another peer's changes.
type notifier struct {
	ctx context.Context
	on  func(bfd.Change)
	wg  sync.WaitGroup

	mu    sync.Mutex
	peers map[netip.Addr]*pending // peers with a worker running
}

type pending struct{ changes []bfd.Change }

func newNotifier(ctx context.Context, on func(bfd.Change)) *notifier {
	return &notifier{ctx: ctx, on: on, peers: map[netip.Addr]*pending{}}
}

// push queues c for its peer's worker, starting the worker if none runs. It never blocks.
func (n *notifier) push(c bfd.Change) {
	if n.on == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.peers[c.Peer]; p != nil {
		p.changes = coalesce(append(p.changes, c))
		return
	}
	p := &pending{changes: []bfd.Change{c}}
	n.peers[c.Peer] = p
	n.wg.Add(1)
	go n.work(c.Peer, p)
}

// coalesce bounds a peer's queue: past maxPending, what is left is the first failure (so
// that the BGP session is still reset for it) and the last change (where the session
// stands now).
func coalesce(q []bfd.Change) []bfd.Change {
	if len(q) <= maxPending {
		return q
	}
	last := q[len(q)-1]
	for _, c := range q[:len(q)-1] {
		if c.Failed() {
			return []bfd.Change{c, last}
		}
	}
	return []bfd.Change{last}
}

// work delivers peer's changes until none is left, or the Manager stops.
func (n *notifier) work(peer netip.Addr, p *pending) {
	defer n.wg.Done()
	for {
		n.mu.Lock()
		if len(p.changes) == 0 || n.ctx.Err() != nil {
			delete(n.peers, peer)
			n.mu.Unlock()
			return
		}
		c := p.changes[0]
		p.changes = p.changes[1:]
		n.mu.Unlock()
		n.on(c)
	}
}

// wait waits for every worker to end: those still delivering finish their current
// change, the changes after it are dropped once the Manager's context ended.
func (n *notifier) wait() { n.wg.Wait() }
