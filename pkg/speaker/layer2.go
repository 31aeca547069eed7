package speaker

import (
	"context"
	"slices"
	"time"

	"github.com/heraldlb/herald/pkg/runner"
)

// DefaultForwardWait is how long layer 2 waits at most, by default, for the forwarder to
// try a new forwarding state before answering for the addresses that need it.
const DefaultForwardWait = 250 * time.Millisecond

// layer2Part answers ARP/NDP for the addresses of the newest plan. Its runner never
// fails (Layer2.Set takes the whole set and reports nothing), so it never backs off: a
// death that changes the plan reaches Layer2.Set one plan later.
type layer2Part struct {
	runner *runner.Runner
	// Touched only on the runner's goroutine:
	seq     uint64   // the plan last applied
	members []string // the live members of that plan
}

// syncLayer2 hands the announcer the newest plan's addresses. When that plan changed
// the forwarding state, it first waits for the forwarder to have tried it — at most
// ForwardWait, and not at all while the forwarder is failing (see doc.go).
func (s *Speaker) syncLayer2(ctx context.Context, full bool) error {
	snap := s.latest.Load()
	if snap == nil || (!full && snap.seq == s.layer2.seq) {
		return nil
	}
	if snap.forwardChanged || snap.relayChanged {
		// One bound for both: the forwarder and the relay work side by side.
		start := s.opts.Clock.Now()
		if snap.forwardChanged {
			s.forward.progress.wait(ctx, snap.seq, s.opts.Clock, s.opts.ForwardWait)
		}
		if left := s.opts.ForwardWait - s.opts.Clock.Since(start); snap.relayChanged && left > 0 {
			s.relay.progress.wait(ctx, snap.seq, s.opts.Clock, left)
		}
	}
	s.opts.Layer2.Set(snap.d.Layer2)
	if s.layer2.members != nil && !slices.Equal(snap.in.Members, s.layer2.members) {
		// Neighbours may have followed another node's announcement while the membership
		// changed: every owner says again what it keeps.
		s.opts.Layer2.Reannounce()
	}
	s.layer2.members = slices.Clip(append([]string{}, snap.in.Members...))
	s.layer2.seq = snap.seq
	if s.opts.Liveness != nil {
		s.opts.Liveness.Applied(snap.gen) // this node answers now as the view of gen asked
	}
	if snap.in.Config != nil {
		s.ready.Store(true)
	}
	return nil
}
