package speaker

import (
	"context"
	"fmt"

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
	// Touched only on the runner's goroutine:
	seq  uint64 // the plan last applied
	told bool   // that this node cannot relay was logged
}

func (s *Speaker) syncRelay(_ context.Context, full bool) error {
	snap := s.latest.Load()
	if snap == nil || (!full && snap.seq == s.relay.seq) {
		return nil
	}
	if s.opts.Relay == nil {
		if len(snap.d.Relay) > 0 && !s.relay.told {
			s.relay.told = true
			s.log.Error("relay-local is on for an address this node announces, but this node cannot relay: it keeps every flow", "err", s.opts.RelayErr)
		}
		s.relay.seq = snap.seq
		return nil
	}
	if full {
		s.opts.Relay.Resync()
	}
	if err := s.opts.Relay.Set(snap.d.Relay); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	s.metrics.Relayed.Set(float64(len(snap.d.Relay)))
	s.relay.seq = snap.seq
	return nil
}
