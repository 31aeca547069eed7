package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/transport"
)

// benchOwner makes the owner's namespace, linked to a peer's, forwarding; the handle is
// closed when the benchmark ends.
func benchOwner(b *testing.B) (*netlab.NS, netns.NsHandle) {
	netlab.Require(b)
	owner, peer := netlab.NewNS(b, "rbo"), netlab.NewNS(b, "rbp")
	netlab.Veth(b, owner, "eth0", peer, "eth0")
	owner.Addr("eth0", "10.77.0.1/24")
	owner.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	h, err := netns.GetFromName(owner.Name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	return owner, h
}

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

// BenchmarkSet programs a node that relays for 25 Services over three other nodes
// (about 900 source-port ranges, near the default bound of 1,024 rules): from nothing,
// unchanged (every resync), and with one node gone (its ranges move to the others).
func BenchmarkSet(b *testing.B) {
	_, h := benchOwner(b)
	nodes := map[string]netip.Addr{"owner": netip.MustParseAddr("10.77.0.1")}
	for i := 2; i <= 4; i++ {
		nodes[fmt.Sprintf("node%d", i)] = netip.AddrFrom4([4]byte{10, 77, 0, byte(i)})
	}
	all := benchRoutes(25, nodes)
	delete(nodes, "node4")
	fewer := benchRoutes(25, nodes)
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

// BenchmarkRouteLookup is what the relay's policy rules cost the node's other traffic:
// a routed packet walks them before the main table, unless the gate before them lets it
// skip them (it did not come in on the link relayed flows arrive on). "send" times one
// UDP datagram from an unconnected local socket (a route lookup each; skipped by the
// gate); "forwarded" times a route lookup for a packet that came in on that link and
// is forwarded (netlink's route get with iif: its round trip included, the difference
// is the walk), with no rules and with the default bound of rules in place.
func BenchmarkRouteLookup(b *testing.B) {
	owner, h := benchOwner(b)
	owner.Run("ip", "neigh", "replace", "10.77.0.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent")
	owner.Run("ip", "route", "add", "10.99.0.0/24", "via", "10.77.0.9")
	var conn net.PacketConn
	var nl *netlink.Handle
	if err := netlab.InNamespace(h, func() (err error) {
		if nl, err = netlink.NewHandle(); err != nil {
			return err
		}
		conn, err = net.ListenPacket("udp4", "10.77.0.1:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	defer nl.Close()
	to := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 9), Port: 9}
	var r *Relay
	if err := netlab.InNamespace(h, func() (err error) { r, err = New(Options{}); return }); err != nil {
		b.Fatal(err)
	}
	// DefaultMaxRules ranges, a port each, relayed to one node.
	var routes []relay.Route
	for i := range DefaultMaxRules {
		routes = append(routes, relay.Route{VIP: netip.AddrFrom4([4]byte{10, 78, byte(i / 250), byte(1 + i%250)}), Proto: transport.TCP,
			Port: 80, From: 1, To: 8192, Via: netip.MustParseAddr("10.77.0.2"), Node: "node2"})
	}
	fwd := &netlink.RouteGetOptions{Iif: "eth0", SrcAddr: net.IPv4(10, 77, 0, 9)}
	for _, n := range []int{0, DefaultMaxRules} {
		if err := netlab.InNamespace(h, func() error { return r.Set(routes[:n]) }); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("send/rules-%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := conn.WriteTo([]byte{1}, to); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("forwarded/rules-%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := nl.RouteGetWithOptions(net.IPv4(10, 99, 0, 5), fwd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if err := netlab.InNamespace(h, func() error { return r.Set(nil) }); err != nil {
		b.Fatal(err)
	}
}
