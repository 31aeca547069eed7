package k8s

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/heraldlb/herald/pkg/logging"
)

// Waiter retries a start-up step that needs the API server (reading the node's address,
// the gossip key) until it succeeds: a daemon started while the API server is
// unreachable waits for it, reports itself not ready meanwhile, and never exits on it.
type Waiter struct {
	// What names the step in the log ("the memberlist key").
	What string
	// Backoff is the first delay between tries, doubled after each failure up to
	// MaxBackoff; defaults 1s and 30s.
	Backoff, MaxBackoff time.Duration
	// TryTimeout bounds each try (an API server that accepts connections but does not
	// answer); default 10s.
	TryTimeout time.Duration
	// LogEvery is how often a failure that goes on is logged again; the first one is
	// logged at once. Default one minute.
	LogEvery time.Duration
	Logger   *slog.Logger
	// Waiting is told why the step waits after every failed try, and nil once it
	// succeeded (for a readiness endpoint); may be nil.
	Waiting func(error)
	// Sleep waits d or until ctx ends; default a timer (tests make it instant).
	Sleep func(ctx context.Context, d time.Duration)
}

// Do calls try until it returns nil, or ctx ends (then it returns ctx's error).
func (w Waiter) Do(ctx context.Context, try func(context.Context) error) error {
	w.Backoff = cmp.Or(w.Backoff, time.Second)
	w.MaxBackoff = cmp.Or(w.MaxBackoff, 30*time.Second)
	w.TryTimeout = cmp.Or(w.TryTimeout, 10*time.Second)
	w.LogEvery = cmp.Or(w.LogEvery, time.Minute)
	log := logging.OrDiscard(w.Logger)
	if w.Sleep == nil {
		w.Sleep = sleep
	}
	var (
		delay    = w.Backoff
		failures int
		logged   time.Time
		first    time.Time
	)
	for {
		tctx, cancel := context.WithTimeout(ctx, w.TryTimeout)
		err := try(tctx)
		cancel()
		if err == nil {
			if w.Waiting != nil {
				w.Waiting(nil)
			}
			if failures > 0 {
				log.Info("start-up step done after waiting", "step", w.What, "tries", failures+1, "after", time.Since(first).Round(time.Millisecond))
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if failures == 0 {
			first = time.Now()
		}
		failures++
		if w.Waiting != nil {
			w.Waiting(errors.New("waiting for " + w.What + ": " + err.Error()))
		}
		if logged.IsZero() || time.Since(logged) >= w.LogEvery {
			log.Warn("waiting, not ready; retrying with backoff", "step", w.What, "err", err, "tries", failures, "retryIn", delay)
			logged = time.Now()
		}
		w.Sleep(ctx, delay)
		delay = min(2*delay, w.MaxBackoff)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
