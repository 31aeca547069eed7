package k8stest

import (
	"errors"
	"sync/atomic"
	"testing"
)

func TestParallel(t *testing.T) {
	var calls atomic.Int64
	if err := Parallel(4, 100, func(int) error { calls.Add(1); return nil }); err != nil || calls.Load() != 100 {
		t.Fatalf("Parallel ran %d calls, err %v; want 100, nil", calls.Load(), err)
	}
	boom := errors.New("boom")
	calls.Store(0)
	err := Parallel(2, 1000, func(i int) error {
		calls.Add(1)
		if i == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || calls.Load() == 1000 {
		t.Errorf("after an error: err %v, %d calls; want boom and fewer than 1000", err, calls.Load())
	}
}
