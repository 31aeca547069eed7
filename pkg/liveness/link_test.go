package liveness

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/heraldlb/herald/hack/netlab"
)

// The watcher calls Up when a link of its namespace comes back up (carrier on), not for
// the links already up when it starts, nor when one goes down.
func TestLinkWatcherSeesLinkUp(t *testing.T) {
	netlab.Require(t)
	node, sw := netlab.NewNS(t, "live-node"), netlab.NewNS(t, "live-sw")
	netlab.Veth(t, node, "eth0", sw, "port0")
	h, err := netns.GetFromName(node.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var ups atomic.Int32
	w := &LinkWatcher{Up: func() { ups.Add(1) }, Namespace: &h}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	time.Sleep(200 * time.Millisecond) // the existing links listed
	node.Run("ip", "link", "set", "eth0", "down")
	time.Sleep(100 * time.Millisecond)
	if n := ups.Load(); n != 0 {
		t.Fatalf("%d calls before any link came up", n)
	}
	node.Run("ip", "link", "set", "eth0", "up")
	waitFor(t, 2*time.Second, "Up called", func() bool { return ups.Load() == 1 })
	// The switch's side down and up: the node's carrier goes and comes back.
	sw.Run("ip", "link", "set", "port0", "down")
	time.Sleep(1500 * time.Millisecond) // the kernel reports carrier changes up to a second late
	sw.Run("ip", "link", "set", "port0", "up")
	waitFor(t, 2*time.Second, "Up called on carrier", func() bool { return ups.Load() == 2 })
}
