package kernel

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/transport"
)

// benchRoutes returns the routes of n Local Services (one TCP port each) whose pods run
// on the owner and three other nodes.
func benchRoutes(n int, nodes map[string]netip.Addr) []relay.Route {
	var out []relay.Route
	for i := range n {
		vip := netip.AddrFrom4([4]byte{10, 78, byte(1 + i/250), byte(1 + i%250)})
		out = append(out, relay.Split(vip, transport.TCP, 80, "owner", nodes)...)
	}
	relay.Sort(out)
	return out
}

// BenchmarkSet programs a node that relays for 80 Services over three other nodes
// (about 1,900 source-port ranges, near the default bound of 2,048 rules): from nothing,
// unchanged (every resync), and with one node gone (its ranges move to the others).
func BenchmarkSet(b *testing.B) {
	netlab.Require(b)
	owner, peer := netlab.NewNS(b, "rbo"), netlab.NewNS(b, "rbp")
	netlab.Veth(b, owner, "eth0", peer, "eth0")
	owner.Addr("eth0", "10.77.0.1/24")
	owner.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	h, err := netns.GetFromName(owner.Name)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	nodes := map[string]netip.Addr{"owner": netip.MustParseAddr("10.77.0.1")}
	for i := 2; i <= 4; i++ {
		nodes[fmt.Sprintf("node%d", i)] = netip.AddrFrom4([4]byte{10, 77, 0, byte(i)})
	}
	all := benchRoutes(80, nodes)
	delete(nodes, "node4")
	fewer := benchRoutes(80, nodes)
	var r *Relay
	in := func(f func() error) {
		if err := netlab.InNamespace(h, f); err != nil {
			b.Fatal(err)
		}
	}
	in(func() (err error) { r, err = New(Options{}); return })
	b.Logf("%d ranges; %d with one node fewer", len(all), len(fewer))
	b.Run("from-empty", func(b *testing.B) {
		for b.Loop() {
			in(func() error { return r.Set(all) })
			b.StopTimer()
			in(func() error { return r.Set(nil) })
			b.StartTimer()
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		in(func() error { return r.Set(all) })
		for b.Loop() {
			in(func() error { r.Resync(); return r.Set(all) })
		}
	})
	b.Run("node-gone", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			in(func() error { return r.Set(all) })
			b.StartTimer()
			in(func() error { return r.Set(fewer) })
		}
	})
	in(func() error { return r.Set(nil) })
}
