package speaker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/runner"
)

// forwardPart programs IPVS for the addresses of the newest plan that forward.
type forwardPart struct {
	runner *runner.Runner
	can    atomic.Bool // this node can forward: read by the planner
	// progress tells layer 2 which plan the forwarder last tried, and how it went.
	progress progress

	// Touched only on the runner's goroutine (and by Run before it starts and after it
	// ends):
	fwd Forwarder // nil once the node cannot forward
	err error     // why it cannot
	seq uint64    // the plan last applied
}

func (f *forwardPart) init(fwd Forwarder, err error) {
	f.fwd, f.err = fwd, err
	if f.fwd == nil && f.err == nil {
		f.err = errors.New("no forwarder")
	}
	f.can.Store(f.fwd != nil)
	f.progress.changed = make(chan struct{})
}

// syncForward hands the forwarder the newest plan's virtual services. A forwarder whose
// kernel turns out to lack IPVS is given up: the node says so and plans again without it.
func (s *Speaker) syncForward(_ context.Context, full bool) error {
	f := &s.forward
	snap := s.latest.Load()
	if snap == nil {
		return nil
	}
	if f.fwd == nil || snap.in.Config == nil {
		f.progress.set(snap.seq, false)
		return nil
	}
	if !full && snap.seq == f.seq {
		return nil
	}
	if full {
		f.fwd.Resync()
	}
	err := f.fwd.Set(snap.d.Forward)
	if errors.Is(err, ipvs.ErrUnsupported) {
		f.fwd, f.err = nil, err
		f.can.Store(false)
		f.progress.set(snap.seq, false)
		s.reportForwarding()
		s.planner.Poke()
		return nil
	}
	f.progress.set(snap.seq, err != nil)
	if err != nil {
		return fmt.Errorf("forwarding: %w", err)
	}
	f.seq = snap.seq
	return nil
}

// reportForwarding says whether this node can forward: a metric, and when it cannot, a
// log line, an Event on its Node and its memberlist metadata.
func (s *Speaker) reportForwarding() {
	f := &s.forward
	if f.fwd != nil {
		s.metrics.CanForward.Set(1)
		return
	}
	s.metrics.CanForward.Set(0)
	s.log.Error("this node cannot forward with IPVS, so it announces no address of a pool that forwards", "err", f.err)
	if node, err := s.nodeList.Get(s.opts.NodeName); err == nil {
		s.events.Eventf(node, corev1.EventTypeWarning, k8s.ReasonIPVSUnavailable,
			"node %s cannot forward with IPVS, so it announces no address of a pool that forwards: %v", s.opts.NodeName, f.err)
	}
	if s.opts.Members != nil {
		if err := s.opts.Members.SetMeta(MemberMeta{IPVS: false}.Encode()); err != nil {
			s.log.Warn("telling the other speakers", "err", err)
		}
	}
}

// progress is which plan a part last tried and whether that failed, for another part to
// wait on without sharing a lock across the first one's I/O.
type progress struct {
	mu      sync.Mutex
	seq     uint64
	failing bool
	// stuck: a wait ran out before the forwarder tried anything more. Later waits do not
	// wait again until it does, so a hung forwarder costs layer 2 one ForwardWait in all,
	// not one per plan.
	stuck   bool
	changed chan struct{} // closed and replaced on every set
}

func (p *progress) set(seq uint64, failing bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq, p.failing, p.stuck = seq, failing, false
	close(p.changed)
	p.changed = make(chan struct{})
}

// wait returns once the plan seq (or a later one) has been tried, the last try failed,
// limit has passed on c, or ctx ended, whichever comes first; at once while the
// forwarder has not tried anything since an earlier wait ran out (it hangs).
func (p *progress) wait(ctx context.Context, seq uint64, c clock.Clock, limit time.Duration) {
	t := c.NewTimer(limit)
	defer t.Stop()
	for {
		p.mu.Lock()
		done, changed := p.seq >= seq || p.failing || p.stuck, p.changed
		p.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-t.C():
			p.mu.Lock()
			p.stuck = true
			p.mu.Unlock()
			return
		case <-ctx.Done():
			return
		}
	}
}
