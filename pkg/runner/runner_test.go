package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type call struct {
	full bool
	at   time.Time
}

// harness runs a Runner on a fake clock; each sync reports itself on calls and returns
// what results gives it next (nil when empty).
type harness struct {
	t       *testing.T
	clock   *clocktesting.FakeClock
	r       *Runner
	calls   chan call
	mu      sync.Mutex
	results []error
	failed  []string
	retries []time.Duration
	healed  []int
}

func newHarness(t *testing.T, opts Options) *harness {
	h := &harness{t: t, clock: clocktesting.NewFakeClock(time.Unix(1000, 0)), calls: make(chan call, 100)}
	opts.Clock = h.clock
	opts.Sync = func(_ context.Context, full bool) error {
		h.calls <- call{full, h.clock.Now()}
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.results) == 0 {
			return nil
		}
		err := h.results[0]
		h.results = h.results[1:]
		return err
	}
	opts.OnFailure = func(err error, in time.Duration) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.failed = append(h.failed, err.Error())
		h.retries = append(h.retries, in)
	}
	opts.OnRecovery = func(n int) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.healed = append(h.healed, n)
	}
	h.r = New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- h.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after its context ended", err)
		}
	})
	return h
}

// next waits for the next sync.
func (h *harness) next() call {
	h.t.Helper()
	select {
	case c := <-h.calls:
		return c
	case <-time.After(5 * time.Second):
		h.t.Fatal("no sync")
		return call{}
	}
}

// none checks that no sync runs while the runner waits on its clock.
func (h *harness) none() {
	h.t.Helper()
	h.waiting()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected sync %+v", c)
	default:
	}
}

// waiting waits until the runner blocks on its clock (or a poke).
func (h *harness) waiting() {
	h.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !h.clock.HasWaiters(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			h.t.Fatal("the runner never waits")
		}
	}
	time.Sleep(5 * time.Millisecond) // let a poke already sent be taken
}

func TestBurstOfPokesIsOneSync(t *testing.T) {
	h := newHarness(t, Options{MinInterval: 10 * time.Millisecond, ResyncPeriod: time.Hour})
	if c := h.next(); !c.full {
		t.Error("the first sync is not full")
	}
	h.waiting()
	h.clock.Step(time.Second)
	h.r.Poke()
	if c := h.next(); c.full {
		t.Error("a poked sync is full")
	}
	h.waiting()
	for range 50 { // a burst while the minimum interval holds the next sync back
		h.r.Poke()
	}
	h.none()
	h.clock.Step(10 * time.Millisecond)
	h.next()
	h.none()
}

func TestMinInterval(t *testing.T) {
	h := newHarness(t, Options{MinInterval: 100 * time.Millisecond, ResyncPeriod: time.Hour})
	first := h.next()
	h.waiting()
	h.r.Poke()
	h.none() // held back by the minimum interval
	h.clock.Step(100 * time.Millisecond)
	if c := h.next(); c.at.Sub(first.at) < 100*time.Millisecond {
		t.Errorf("second sync %s after the first, want at least 100ms", c.at.Sub(first.at))
	}
}

func TestBackoffAndReporting(t *testing.T) {
	h := newHarness(t, Options{ResyncPeriod: time.Hour})
	boom := errors.New("IPVS: netlink busy")
	h.mu.Lock()
	h.results = []error{boom, boom, boom, boom, boom, boom, boom, boom, nil}
	h.mu.Unlock()
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	prev := h.next()
	for i, d := range want {
		h.waiting()
		h.clock.Step(d - time.Millisecond)
		h.none() // not before the backoff has passed
		h.clock.Step(time.Millisecond)
		c := h.next()
		if got := c.at.Sub(prev.at); got != d || !c.full {
			t.Errorf("retry %d after %s (full %v), want %s in full", i+1, got, c.full, d)
		}
		prev = c
	}
	h.waiting()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.failed) != 1 || h.retries[0] != time.Second {
		t.Errorf("failure reported %d times (%v), want once with the first delay", len(h.failed), h.retries)
	}
	if len(h.healed) != 1 || h.healed[0] != 8 {
		t.Errorf("recovery reported %v, want once after 8 failures", h.healed)
	}
}

func TestPeriodicFullResync(t *testing.T) {
	h := newHarness(t, Options{ResyncPeriod: 30 * time.Second})
	h.next()
	h.waiting()
	h.clock.Step(30 * time.Second)
	if c := h.next(); !c.full {
		t.Error("the periodic sync is not full")
	}
}
