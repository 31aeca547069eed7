package announce

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/layer2"
	"github.com/heraldlb/herald/pkg/leaktest"
)

// Run returns only once every goroutine it started (socket readers, gratuitous bursts,
// netlink subscriptions) has ended.
func TestRunLeavesNoGoroutine(t *testing.T) {
	netlab.Require(t)
	a, b := netlab.NewNS(t, "leak-a"), netlab.NewNS(t, "leak-b")
	netlab.Veth(t, a, "a0", b, "b0")
	a.Addr("a0", "192.168.79.1/24")
	a.Addr("a0", "fd79::1/64")
	ann := New(Options{Burst: []time.Duration{0, time.Hour}})     // a burst still running at the end
	ann.burstDone = func() { time.Sleep(200 * time.Millisecond) } // and slow to end
	ann.Set([]layer2.Address{{IP: netip.MustParseAddr("192.168.79.100")}, {IP: netip.MustParseAddr("fd79::100")}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Do(func() error { return ann.Run(ctx) }) }()
	for deadline := time.Now().Add(5 * time.Second); len(ann.Serving()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("serving %v", ann.Serving())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	leaktest.Check(t, "github.com/heraldlb/herald/pkg/layer2/announce.")
}
