package k8s_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/heraldlb/herald/pkg/k8s"
)

// A start-up step that cannot reach the API server is tried again with capped backoff,
// logged once (not on every try), reported as not ready meanwhile, and done once it
// succeeds; it gives up only when its context ends.
func TestWaiter(t *testing.T) {
	var logs bytes.Buffer
	var slept []time.Duration
	var waiting []string
	fails := 7
	w := k8s.Waiter{
		What: "the node's address", Backoff: time.Second, MaxBackoff: 8 * time.Second,
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
		Sleep:   func(_ context.Context, d time.Duration) { slept = append(slept, d) },
		Waiting: func(err error) { waiting = append(waiting, errString(err)) },
	}
	tries := 0
	err := w.Do(context.Background(), func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("a try without a deadline")
		}
		tries++
		if tries <= fails {
			return errors.New("dial tcp 192.168.10.5:6443: connect: connection refused")
		}
		return nil
	})
	if err != nil || tries != fails+1 {
		t.Fatalf("Do = %v after %d tries, want nil after %d", err, tries, fails+1)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	if len(slept) != len(want) {
		t.Fatalf("slept %v, want %v", slept, want)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("slept %v, want %v", slept, want)
		}
	}
	if n := strings.Count(logs.String(), "waiting, not ready"); n != 1 {
		t.Errorf("the wait logged %d times, want once:\n%s", n, logs.String())
	}
	if len(waiting) != fails+1 || !strings.Contains(waiting[0], "waiting for the node's address: dial tcp") || waiting[fails] != "" {
		t.Errorf("readiness told %q; want the reason on each failure, then ready", waiting)
	}

	// Ended by its context: the context's error, nothing else.
	ctx, cancel := context.WithCancel(context.Background())
	w.Sleep = func(context.Context, time.Duration) { cancel() }
	if err := w.Do(ctx, func(context.Context) error { return errors.New("connection refused") }); !errors.Is(err, context.Canceled) {
		t.Errorf("Do after its context ended = %v, want context.Canceled", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
