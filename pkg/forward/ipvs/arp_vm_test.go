package ipvs_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/transport"
)

// The node's kernel answers ARP for an address on herald0 unless Herald suppresses it;
// after Set it is silent, for IPv4 and IPv6.
func TestKernelSilentForVIPsInVM(t *testing.T) {
	netlab.RequireVM(t)
	host(t, 4) // a client namespace h4 on a veth v4 <-> v4p, 10.4.0.2
	_ = netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: ipvs.LinkName}})
	l, _ := netlink.LinkByName(ipvs.LinkName)
	_ = netlink.LinkSetUp(l)
	// The client needs an IPv6 path to the node too.
	v4, _ := netlink.LinkByName("v4")
	_ = netlink.AddrAdd(v4, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("fd04::1"), Mask: net.CIDRMask(64, 128)}, Flags: 0x80 /* nodad */})
	probe := netlab.NewProber(t, &netlab.NS{Name: "h4"}, "v4p", netip.MustParseAddr("10.4.0.2"))
	vip4, vip6 := netip.MustParseAddr("192.168.10.95"), netip.MustParseAddr("fd10::95")

	// Without Herald's rules the kernel claims an address on herald0 on every link.
	_ = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(vip4.AsSlice()), Mask: net.CIDRMask(32, 32)}})
	var macs []string
	for deadline := time.Now().Add(3 * time.Second); len(macs) == 0 && time.Now().Before(deadline); {
		macs, _ = probe.AskARP(vip4, 300*time.Millisecond)
	}
	if len(macs) == 0 {
		t.Fatal("control: the kernel did not answer ARP for an address on herald0; this test would prove nothing")
	}

	f := newForwarder(t, linux(t), owns)
	if err := f.Set([]forward.Service{{VIP: vip4, Port: 80, Proto: transport.TCP}, {VIP: vip6, Port: 80, Proto: transport.TCP}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if macs, _ := probe.AskARP(vip4, 300*time.Millisecond); len(macs) != 0 {
			t.Fatalf("the kernel still answers ARP for %s: %v", vip4, macs)
		}
	}
	// Linux answers Neighbor Solicitations only for addresses on the receiving link: the
	// control, an address on the node's side of the veth, is answered; herald0's is not.
	var got []string
	for deadline := time.Now().Add(3 * time.Second); len(got) == 0 && time.Now().Before(deadline); {
		got, _ = probe.AskNDP(netip.MustParseAddr("fd04::1"), 300*time.Millisecond)
	}
	if len(got) == 0 {
		t.Fatal("control: no Neighbor Advertisement for the node's own fd04::1; the IPv6 check would prove nothing")
	}
	if macs, _ := probe.AskNDP(vip6, 500*time.Millisecond); len(macs) != 0 {
		t.Errorf("the kernel answers NDP for %s on another link: %v", vip6, macs)
	}
}
