package speaker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/runner"
)

// Relayer is what the speaker needs of the relay (pkg/relay/kernel).
type Relayer interface {
	Set([]relay.Route) error
	Resync()
}

// relayPart hands the relay the flows of the newest plan that this node passes on to
// other nodes (pools with relay-local). Its I/O is its own: layer 2 never waits for it.
// A node that owns an address it relays for, but whose relay is failing, keeps every flow
// and delivers it to its own endpoints: MetalLB's behaviour, never a dropped flow.
type relayPart struct {
	runner *runner.Runner
	// kick: the kernel took part of the relay's state away (RelayKernelChanged); the
	// next sync applies the plan again even when it has not changed.
	kick atomic.Bool
	// progress tells layer 2 which plan the relay last tried, and how it went.
	progress progress
	// Touched only on the runner's goroutine:
	seq  uint64 // the plan last applied
	told bool   // that this node cannot relay was logged
	left string // what the last partial relay left out, as logged
}

func (s *Speaker) syncRelay(_ context.Context, full bool) error {
	snap := s.latest.Load()
	kicked := s.relay.kick.Swap(false)
	if snap == nil || (!full && !kicked && snap.seq == s.relay.seq) {
		return nil
	}
	if s.opts.Relay == nil {
		if len(snap.d.Relay) > 0 && !s.relay.told {
			s.relay.told = true
			s.log.Error("relay-local is on for an address this node announces, but this node cannot relay: it keeps every flow", "err", s.opts.RelayErr)
		}
		s.relay.seq = snap.seq
		s.relay.progress.set(snap.seq, false)
		return nil
	}
	if full || kicked {
		s.opts.Relay.Resync()
	}
	err := s.opts.Relay.Set(snap.d.Relay)
	// Routes the kernel cannot take as things are (a bound reached, a node no link
	// reaches, kube-proxy in IPVS mode) are a state to report, not a failure: the rest
	// is in place, and the next plan is applied at once rather than after a backoff.
	left := 0
	if p := (*relay.Partial)(nil); errors.As(err, &p) {
		left, err = p.Left, nil
		if msg := p.Err.Error(); msg != s.relay.left {
			s.relay.left = msg
			s.log.Error("relay: some flows stay with this node", "ranges", p.Left, "err", p.Err)
		}
	} else if err == nil && s.relay.left != "" {
		s.relay.left = ""
		s.log.Info("relay: every planned flow is relayed again")
	}
	s.relay.progress.set(snap.seq, err != nil)
	if err != nil {
		s.relay.left = "" // what is left out after the failure is logged anew
		return fmt.Errorf("relay: %w", err)
	}
	s.metrics.Relayed.Set(float64(len(snap.d.Relay) - left))
	s.metrics.RelayLeftOut.Set(float64(left))
	s.relay.seq = snap.seq
	return nil
}

// RelayKernelChanged says the kernel may have taken part of the relay's state away (a
// link went down and its routes with it): the relay applies the plan again at once.
func (s *Speaker) RelayKernelChanged() {
	s.relay.kick.Store(true)
	s.relay.runner.Poke()
}

// relayGained reports whether now relays a flow that prev's plan did not: layer 2 then
// gives the relay a moment before it draws the traffic, so that a flow another node
// serves is not handed, mid-way, to this node's own endpoint.
func relayGained(prev *snapshot, now []relay.Route) bool {
	if prev == nil {
		return len(now) > 0
	}
	id := func(r relay.Route) relay.Route { return r }
	return gained(prev.d.Relay, now, id, func(a, b relay.Route) bool { return a == b })
}
