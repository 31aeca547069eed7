// Package runner turns bursts of change notifications into few, complete syncs: one
// goroutine calls Sync, never more often than MinInterval, again after every Poke, in
// full every ResyncPeriod, and after a failure again with exponential backoff until it
// succeeds. It is the shape of kube-proxy's bounded-frequency runner, with the backoff
// and the reporting a daemon needs; the clock is injectable so tests need no sleeps.
package runner

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Options configure a Runner. Zero durations take the defaults noted.
type Options struct {
	// Sync brings the world in line with the desired state; full asks it to compare with
	// the world rather than with what it last applied. Required.
	Sync func(ctx context.Context, full bool) error
	// MinInterval is the least time between the starts of two syncs; default 0.
	MinInterval time.Duration
	// ResyncPeriod is how often a full sync runs without being poked; default 30s.
	ResyncPeriod time.Duration
	// Backoff is the first retry delay after a failure, doubled after each further
	// failure up to MaxBackoff; defaults 1s and 30s.
	Backoff, MaxBackoff time.Duration
	// OnFailure is told of a failing sync when the failure is new or its message
	// changed, with the delay before the retry; OnRecovery when a sync succeeds after
	// failures. Either may be nil. Both run on Run's goroutine.
	OnFailure  func(err error, retryIn time.Duration)
	OnRecovery func(failures int)
	Clock      clock.Clock // default the real clock
}

// Runner runs Sync; see the package documentation.
type Runner struct {
	opts Options
	poke chan struct{}
}

// New returns a Runner; nothing runs before Run.
func New(opts Options) *Runner {
	if opts.ResyncPeriod == 0 {
		opts.ResyncPeriod = 30 * time.Second
	}
	if opts.Backoff == 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	return &Runner{opts: opts, poke: make(chan struct{}, 1)}
}

// Poke asks for a sync soon. Many pokes before the sync starts make one sync. It never
// blocks and is safe from any goroutine.
func (r *Runner) Poke() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// Run syncs at once (in full), then as poked, until ctx ends; it returns nil then.
func (r *Runner) Run(ctx context.Context) error {
	c := r.opts.Clock
	var (
		failures int
		lastErr  string
		lastRun  time.Time
		full     = true
		pending  = true
		backoff  time.Duration
	)
	resync := c.NewTimer(r.opts.ResyncPeriod)
	defer resync.Stop()
	for {
		if pending {
			// Wait out the minimum interval (or the backoff), still taking pokes.
			wait := r.opts.MinInterval - c.Since(lastRun)
			if failures > 0 {
				wait = backoff - c.Since(lastRun)
			}
			if wait > 0 {
				t := c.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil
				case <-t.C():
				}
			}
			select {
			case <-r.poke: // this sync serves the pokes that came while it waited
			default:
			}
			pending = false
			lastRun = c.Now()
			err := r.opts.Sync(ctx, full)
			if ctx.Err() != nil {
				return nil
			}
			switch {
			case err != nil:
				failures++
				backoff = min(r.opts.Backoff<<min(failures-1, 30), r.opts.MaxBackoff)
				if msg := err.Error(); msg != lastErr && r.opts.OnFailure != nil {
					r.opts.OnFailure(err, backoff)
				}
				lastErr = err.Error()
				pending, full = true, true // retry in full: a failure may leave things half done
				continue
			case failures > 0:
				if r.opts.OnRecovery != nil {
					r.opts.OnRecovery(failures)
				}
				failures, lastErr = 0, ""
			}
			full = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.poke:
			pending = true
		case <-resync.C():
			resync.Reset(r.opts.ResyncPeriod)
			pending, full = true, true
		}
	}
}
