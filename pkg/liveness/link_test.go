package liveness

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

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

// cameUp: a known link that comes up with its carrier wakes the detector; a link seen for
// the first time, one going down, loopback, and a dummy link (herald0) do not.
func TestLinksCameUp(t *testing.T) {
	update := func(index int32, kind netlink.Link, flags net.Flags, raw uint32) netlink.LinkUpdate {
		a := kind.Attrs()
		a.Index, a.Flags, a.RawFlags = int(index), flags, raw
		u := netlink.LinkUpdate{Link: kind}
		u.Index, u.Header.Type = index, unix.RTM_NEWLINK
		return u
	}
	up, running := net.FlagUp, uint32(unix.IFF_UP|unix.IFF_RUNNING)
	veth := func() netlink.Link { return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}} }
	dummy := func() netlink.Link { return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "herald0"}} }
	lo := func() netlink.Link { return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}} }
	for _, c := range []struct {
		name  string
		steps []netlink.LinkUpdate
		want  []bool
	}{
		{"a link down then up", []netlink.LinkUpdate{update(2, veth(), 0, 0), update(2, veth(), up, running)}, []bool{false, true}},
		{"up with no carrier, then the carrier", []netlink.LinkUpdate{update(2, veth(), up, unix.IFF_UP), update(2, veth(), up, running)}, []bool{false, true}},
		{"first seen up", []netlink.LinkUpdate{update(2, veth(), up, running)}, []bool{false}},
		{"up again while up", []netlink.LinkUpdate{update(2, veth(), up, running), update(2, veth(), up, running)}, []bool{false, false}},
		{"a dummy link down then up", []netlink.LinkUpdate{update(3, dummy(), 0, 0), update(3, dummy(), up, running)}, []bool{false, false}},
		{"loopback down then up", []netlink.LinkUpdate{update(1, lo(), net.FlagLoopback, 0), update(1, lo(), up|net.FlagLoopback, running)}, []bool{false, false}},
		{"no link", []netlink.LinkUpdate{{}}, []bool{false}},
	} {
		l := links{}
		for i, u := range c.steps {
			if got := l.cameUp(u); got != c.want[i] {
				t.Errorf("%s: step %d: cameUp %v, want %v", c.name, i, got, c.want[i])
			}
		}
	}
}
