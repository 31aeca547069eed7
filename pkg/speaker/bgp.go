package speaker

import (
	"context"
	"errors"
	"fmt"

	"github.com/heraldlb/herald/pkg/runner"
)

// bgpPart hands the BGP speaker the peers and routes of the newest plan. A BGP process
// that fails or hangs holds up this part alone, on its own backoff.
type bgpPart struct {
	runner *runner.Runner
	seq    uint64 // the plan last applied in full; touched only on the runner's goroutine
}

func (s *Speaker) syncBGP(ctx context.Context, full bool) error {
	snap := s.latest.Load()
	if s.opts.BGP == nil || snap == nil || (!full && snap.seq == s.bgp.seq) {
		return nil
	}
	var errs []error
	if err := s.opts.BGP.SetPeers(ctx, snap.d.BGPPeers); err != nil {
		errs = append(errs, fmt.Errorf("BGP peers: %w", err))
	}
	if err := s.opts.BGP.SetRoutes(ctx, snap.d.BGPRoutes); err != nil {
		errs = append(errs, fmt.Errorf("BGP routes: %w", err))
	}
	if len(errs) == 0 {
		s.bgp.seq = snap.seq
	}
	return errors.Join(errs...)
}
