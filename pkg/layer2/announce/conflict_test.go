package announce

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"

	"github.com/heraldlb/herald/hack/netlab"
)

// neighbour returns the hardware address ns's kernel holds for ip on dev, "" if none.
func neighbour(t *testing.T, ns *netlab.NS, dev string, ip netip.Addr) string {
	t.Helper()
	f := strings.Fields(ns.Run("ip", "neigh", "show", ip.String(), "dev", dev))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// waitNeighbour waits up to limit for ns's entry for ip to be at mac.
func waitNeighbour(t *testing.T, ns *netlab.NS, dev string, ip netip.Addr, mac string, limit time.Duration) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = neighbour(t, ns, dev, ip); got == mac {
			return
		}
	}
	t.Fatalf("%s's neighbour entry for %s is at %q after %v, want %s", ns.Name, ip, got, limit, mac)
}

// resolve makes ns's kernel resolve ip, as a client does before its first packet: it
// sends a datagram to the discard port.
func resolve(t *testing.T, ns *netlab.NS, ip netip.Addr) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(ip, 9).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	if err != nil {
		t.Fatalf("send to %s from %s: %v", ip, ns.Name, err)
	}
}

// ndFrame builds an Ethernet frame carrying NDP message m from src (at srcMAC) to dst
// (at dstMAC) with the given hop limit.
func ndFrame(t *testing.T, m ndp.Message, src, dst netip.Addr, srcMAC, dstMAC net.HardwareAddr, hopLimit uint8) []byte {
	t.Helper()
	icmp, err := ndp.MarshalMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(icmp[2:4], 0)
	binary.BigEndian.PutUint16(icmp[2:4], icmpv6Checksum(src, dst, icmp))
	pkt := make([]byte, 40, 40+len(icmp))
	pkt[0] = 6 << 4
	binary.BigEndian.PutUint16(pkt[4:6], uint16(len(icmp)))
	pkt[6], pkt[7] = 58, hopLimit
	s, d := src.As16(), dst.As16()
	copy(pkt[8:24], s[:])
	copy(pkt[24:40], d[:])
	pkt = append(pkt, icmp...)
	b, err := (&ethernet.Frame{Destination: dstMAC, Source: srcMAC, EtherType: ethernet.EtherTypeIPv6, Payload: pkt}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Another node (a process on a third host, with a socket of its own) claims an owned
// address with a gratuitous ARP and an unsolicited advertisement, as a node does that
// briefly believed it owned the address: the client's kernel moves its neighbour entry
// to that node, and the owner's next announcement moves it back. Without the owner's
// answer, the entry would stay on the wrong node until it aged out.
func TestReannouncesWhenAnotherNodeClaims(t *testing.T) {
	netlab.Require(t)
	sw, a, b, c := netlab.NewNS(t, "l2sw"), netlab.NewNS(t, "l2a"), netlab.NewNS(t, "l2b"), netlab.NewNS(t, "l2c")
	sw.Bridge("br0")
	netlab.Plug(t, sw, "br0", "pa", a, "a0")
	netlab.Plug(t, sw, "br0", "pb", b, "b0")
	netlab.Plug(t, sw, "br0", "pc", c, "c0")
	for i, h := range []struct {
		ns  *netlab.NS
		dev string
	}{{a, "a0"}, {b, "b0"}, {c, "c0"}} {
		h.ns.Addr(h.dev, "192.168.79."+string(rune('1'+i))+"/24")
		h.ns.Addr(h.dev, "fd79::"+string(rune('1'+i))+"/64")
	}
	e := &linkEnv{a: a, b: b, aMAC: a.MAC("a0")}
	e.probe = netlab.NewProber(t, b, "b0", netip.MustParseAddr("192.168.79.2"))
	usurper := netlab.NewProber(t, c, "c0", netip.MustParseAddr("192.168.79.3"))
	cMAC := usurper.Ifi.HardwareAddr
	vip4, vip6 := netip.MustParseAddr("192.168.79.100"), netip.MustParseAddr("fd79::100")
	e.startHelper(t, vip4.String(), vip6.String())

	for deadline := time.Now().Add(5 * time.Second); ; {
		m4, _ := e.probe.AskARP(vip4, 200*time.Millisecond)
		m6, _ := e.probe.AskNDP(vip6, 200*time.Millisecond)
		if len(m4) == 1 && len(m6) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not answered: ARP %v, NDP %v", m4, m6)
		}
	}
	resolve(t, b, vip4)
	resolve(t, b, vip6)
	waitNeighbour(t, b, "b0", vip4, e.aMAC, 2*time.Second)
	waitNeighbour(t, b, "b0", vip6, e.aMAC, 2*time.Second)

	garp, err := gratuitousARP(vip4, cMAC)
	if err != nil {
		t.Fatal(err)
	}
	forgeNA := ndFrame(t, unsolicitedNA(vip6, cMAC).na, vip6, allNodes, cMAC, allNodesMAC, 255)
	claim := func() {
		t.Helper()
		if err := usurper.WriteFrame(garp[0]); err != nil { // the request form
			t.Fatal(err)
		}
		if err := usurper.WriteFrame(forgeNA); err != nil {
			t.Fatal(err)
		}
	}

	// The owner answers the claim with one announcement of its own, heard by the client...
	_, _ = e.probe.AskARP(netip.MustParseAddr("192.168.79.3"), time.Millisecond) // forget what was heard so far
	claim()
	fromOwner := func(p *arp.Packet) bool {
		return p.SenderIP == vip4 && p.TargetIP == vip4 && p.SenderHardwareAddr.String() == e.aMAC
	}
	if _, err := e.probe.ReadARP(time.Second, fromOwner); err != nil {
		t.Fatalf("no gratuitous ARP from the owner after another node claimed %s: %v", vip4, err)
	}
	// ...whose kernel moves the entries back to the owner.
	waitNeighbour(t, b, "b0", vip4, e.aMAC, time.Second)
	waitNeighbour(t, b, "b0", vip6, e.aMAC, time.Second)

	// A storm of claims (two nodes that both believe they own the address) is answered
	// at most once per ConflictInterval, the last word the owner's.
	time.Sleep(300 * time.Millisecond) // the last answer is older than ConflictInterval
	stormStart := time.Now()
	for range 20 {
		claim()
	}
	// Answered at once, then at most once per interval while the storm lasts (one
	// interval for a storm shorter than it), and once at the end.
	storm := 2 + int(time.Since(stormStart)/DefaultConflictInterval)
	waitNeighbour(t, b, "b0", vip4, e.aMAC, time.Second)
	waitNeighbour(t, b, "b0", vip6, e.aMAC, time.Second)
	time.Sleep(300 * time.Millisecond) // the trailing answer is out

	metrics := metricValues(e.stopHelper())
	// The takeover burst (3 announcements, 2 ARP frames each), one answer to the first
	// claim, at least one and at most storm to the storm.
	for _, f := range []struct {
		name   string
		frames int
	}{{`herald_layer2_gratuitous_sent_total{family=IPv4}`, 2}, {`herald_layer2_gratuitous_sent_total{family=IPv6}`, 1}} {
		least, most := float64(f.frames*(3+1+1)), float64(f.frames*(3+1+storm))
		if got := metrics[f.name]; got < least || got > most {
			t.Errorf("%s = %g, want %g to %g", f.name, got, least, most)
		}
	}
	for name, want := range map[string]float64{
		`herald_layer2_conflicts_total{family=IPv4}`: 21,
		`herald_layer2_conflicts_total{family=IPv6}`: 21,
	} {
		if got := metrics[name]; got != want {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}

	// The control: with no owner to answer, the same claim moves the client for good.
	claim()
	waitNeighbour(t, b, "b0", vip4, cMAC.String(), time.Second)
	waitNeighbour(t, b, "b0", vip6, cMAC.String(), time.Second)
}

// A Neighbor Solicitation whose hop limit is not 255 may come from off the link (RFC
// 4861 7.1.1): it is dropped and counted, not answered.
func TestDropsSolicitationsFromOffLink(t *testing.T) {
	e := setupLink(t)
	vip6 := netip.MustParseAddr("fd77::100")
	e.startHelper(t, vip6.String())
	for deadline := time.Now().Add(5 * time.Second); ; {
		if m, _ := e.probe.AskNDP(vip6, 200*time.Millisecond); len(m) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answered", vip6)
		}
	}
	group, err := ndp.SolicitedNodeMulticast(vip6)
	if err != nil {
		t.Fatal(err)
	}
	g := group.As16()
	groupMAC := net.HardwareAddr{0x33, 0x33, g[12], g[13], g[14], g[15]}
	ns := &ndp.NeighborSolicitation{TargetAddress: vip6, Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: e.probe.Ifi.HardwareAddr}}}
	if err := e.probe.WriteFrame(ndFrame(t, ns, netip.MustParseAddr("fd77::2"), group, e.probe.Ifi.HardwareAddr, groupMAC, 64)); err != nil {
		t.Fatal(err)
	}
	if na, err := e.probe.ReadNA(500*time.Millisecond, vip6, true); err == nil {
		t.Errorf("answered a solicitation with hop limit 64: %+v", na)
	}
	metrics := strings.Join(e.stopHelper(), "\n")
	if want := `herald_layer2_dropped_total{family=IPv6,reason=hop_limit} 1`; !strings.Contains(metrics, want) {
		t.Errorf("helper metrics lack %q:\n%s", want, metrics)
	}
}

// The interface is deleted and created again under the same name (a new index): the
// announcer answers NDP on the new one at once, although Go's process-wide cache of zone
// names still holds the old index for a minute.
func TestAnswersNDPOnInterfaceRecreated(t *testing.T) {
	e := setupLink(t)
	vip6 := netip.MustParseAddr("fd77::100")
	e.startHelper(t, vip6.String())
	ask := func(p *netlab.Prober, limit time.Duration) {
		t.Helper()
		var macs []string
		for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
			if macs, _ = p.AskNDP(vip6, 200*time.Millisecond); len(macs) == 1 {
				return
			}
		}
		t.Fatalf("%s not answered within %v (answers %v)", vip6, limit, macs)
	}
	ask(e.probe, 5*time.Second)

	e.a.Run("ip", "link", "del", "a0") // its peer b0 goes with it
	netlab.Veth(t, e.a, "a0", e.b, "b0")
	e.a.Addr("a0", "192.168.77.1/24")
	e.a.Addr("a0", "fd77::1/64")
	e.b.Addr("b0", "192.168.77.2/24")
	e.b.Addr("b0", "fd77::2/64")
	probe := netlab.NewProber(t, e.b, "b0", netip.MustParseAddr("192.168.77.2"))
	ask(probe, 10*time.Second)
}

// metricValues reads the helper's metric lines, "name{labels} value".
func metricValues(lines []string) map[string]float64 {
	out := map[string]float64{}
	for _, l := range lines {
		name, v, ok := strings.Cut(l, " ")
		if f, err := strconv.ParseFloat(v, 64); ok && err == nil {
			out[name] = f
		}
	}
	return out
}
