package leaktest

import (
	"testing"
	"time"
)

type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }

func park(stop chan struct{}) { <-stop }

func TestCheckFindsARunningGoroutine(t *testing.T) {
	stop := make(chan struct{})
	go park(stop)
	time.Sleep(10 * time.Millisecond)
	r := &recorder{TB: t}
	Check(r, "github.com/heraldlb/herald/pkg/leaktest.park")
	close(stop)
	if !r.failed {
		t.Error("a parked goroutine went unnoticed")
	}
	time.Sleep(10 * time.Millisecond)
	r = &recorder{TB: t}
	Check(r, "github.com/heraldlb/herald/pkg/leaktest.park")
	if r.failed {
		t.Error("an ended goroutine was reported")
	}
}

// A library's goroutine that ends within Grace passes; one that stays does not.
func TestCheckGivesLibrariesGrace(t *testing.T) {
	stop := make(chan struct{})
	go park(stop)
	time.AfterFunc(100*time.Millisecond, func() { close(stop) })
	r := &recorder{TB: t}
	Check(r, "leaktest.park") // not a Herald package path: lenient
	if r.failed {
		t.Error("a goroutine ending 100ms later was reported")
	}
	stay := make(chan struct{})
	defer close(stay)
	go park(stay)
	time.Sleep(10 * time.Millisecond) // until it runs: a goroutine not started yet has no stack to find
	r = &recorder{TB: t}
	Check(r, "leaktest.park")
	if !r.failed {
		t.Error("a goroutine staying past Grace went unnoticed")
	}
}

func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// One of Herald's goroutines caught running gets Exiting to end, not more.
func TestCheckLetsARunningGoroutineEnd(t *testing.T) {
	go spin(30 * time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	r := &recorder{TB: t}
	Check(r, "github.com/heraldlb/herald/pkg/leaktest.spin")
	if r.failed {
		t.Error("a goroutine ending 30ms later was reported")
	}
	go spin(time.Second)
	time.Sleep(5 * time.Millisecond)
	r = &recorder{TB: t}
	Check(r, "github.com/heraldlb/herald/pkg/leaktest.spin")
	if !r.failed {
		t.Error("a goroutine running on for a second went unnoticed")
	}
}
