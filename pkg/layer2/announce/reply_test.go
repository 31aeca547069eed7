package announce

import (
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

var (
	ourMAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	vip       = netip.MustParseAddr("192.168.10.90")
	vip6      = netip.MustParseAddr("fc00::90")
	clientIP  = netip.MustParseAddr("192.168.10.2")
	client6   = netip.MustParseAddr("fe80::2")
)

func owns(ips ...netip.Addr) func(netip.Addr) bool {
	return func(ip netip.Addr) bool {
		for _, o := range ips {
			if o == ip {
				return true
			}
		}
		return false
	}
}

func arpFrame(t testing.TB, op arp.Operation, srcMAC net.HardwareAddr, srcIP, dstIP netip.Addr) []byte {
	t.Helper()
	p, err := arp.NewPacket(op, srcMAC, srcIP, net.HardwareAddr{0, 0, 0, 0, 0, 0}, dstIP)
	if err != nil {
		t.Fatal(err)
	}
	b, err := marshalFrame(broadcast, srcMAC, p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestARPReply(t *testing.T) {
	req := arpFrame(t, arp.OperationRequest, clientMAC, clientIP, vip)
	tests := []struct {
		name  string
		frame []byte
		owned func(netip.Addr) bool
		want  verdict
	}{
		{"owned", req, owns(vip), answered},
		{"not owned", req, owns(), notOwned},
		{"a reply", arpFrame(t, arp.OperationReply, clientMAC, clientIP, vip), owns(vip), notRequest},
		{"our own", arpFrame(t, arp.OperationRequest, ourMAC, vip, vip), owns(vip), ownPacket},
		{"gratuitous request from another node", arpFrame(t, arp.OperationRequest, clientMAC, vip, vip), owns(vip), conflict},
		{"gratuitous reply from another node", arpFrame(t, arp.OperationReply, clientMAC, vip, vip), owns(vip), conflict},
		{"reply from another node", arpFrame(t, arp.OperationReply, clientMAC, vip, clientIP), owns(vip), conflict},
		{"request asked from an owned address", arpFrame(t, arp.OperationRequest, clientMAC, vip, clientIP), owns(vip), conflict},
		{"gratuitous for an address not owned", arpFrame(t, arp.OperationRequest, clientMAC, clientIP, clientIP), owns(vip), notOwned},
		{"probe for an owned address", arpFrame(t, arp.OperationRequest, clientMAC, netip.IPv4Unspecified(), vip), owns(vip, netip.IPv4Unspecified()), answered},
		{"truncated", req[:20], owns(vip), malformed},
		{"empty", nil, owns(vip), malformed},
		{"not ARP", append(append([]byte{}, req[:12]...), append([]byte{0x08, 0x00}, req[14:]...)...), owns(vip), malformed},
		{"bad ARP payload", append(append([]byte{}, req[:14]...), make([]byte, 46)...), owns(vip), malformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, dst, cl, v := arpReply(tt.frame, ourMAC, tt.owned)
			if v != tt.want {
				t.Fatalf("verdict %v, want %v", v, tt.want)
			}
			if v == conflict && (cl.ip != vip || cl.mac.String() != clientMAC.String()) {
				t.Errorf("claim %s at %s, want %s at %s", cl.ip, cl.mac, vip, clientMAC)
			}
			if v != answered {
				return
			}
			var f ethernet.Frame
			var p arp.Packet
			if err := f.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if err := p.UnmarshalBinary(f.Payload); err != nil {
				t.Fatal(err)
			}
			if p.TargetIP != vip && tt.name == "probe for an owned address" {
				return
			}
			if dst.String() != clientMAC.String() || f.Destination.String() != clientMAC.String() || f.Source.String() != ourMAC.String() {
				t.Errorf("frame %s -> %s (sent to %s), want %s -> %s", f.Source, f.Destination, dst, ourMAC, clientMAC)
			}
			if p.Operation != arp.OperationReply || p.SenderIP != vip || p.SenderHardwareAddr.String() != ourMAC.String() || p.TargetIP != clientIP || p.TargetHardwareAddr.String() != clientMAC.String() {
				t.Errorf("reply %+v", p)
			}
		})
	}
}

func TestGratuitousARP(t *testing.T) {
	frames, err := gratuitousARP(vip, ourMAC)
	if err != nil || len(frames) != 2 {
		t.Fatalf("%d frames, %v", len(frames), err)
	}
	for i, b := range frames {
		var f ethernet.Frame
		var p arp.Packet
		if err := f.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if err := p.UnmarshalBinary(f.Payload); err != nil {
			t.Fatal(err)
		}
		if f.Destination.String() != broadcast.String() || p.SenderIP != vip || p.TargetIP != vip || p.SenderHardwareAddr.String() != ourMAC.String() {
			t.Errorf("frame %d: %s -> %s %+v", i, f.Source, f.Destination, p)
		}
		// Linux takes a fresh update only from a request, or from a reply whose target
		// hardware address is the sender's.
		if p.Operation == arp.OperationReply && p.TargetHardwareAddr.String() != ourMAC.String() {
			t.Errorf("gratuitous reply with target hardware address %s", p.TargetHardwareAddr)
		}
	}
}

func nsBytes(t testing.TB, target netip.Addr, src net.HardwareAddr) []byte {
	t.Helper()
	b, err := ndp.MarshalMessage(&ndp.NeighborSolicitation{TargetAddress: target, Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: src}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func naBytes(t testing.TB, target netip.Addr, mac net.HardwareAddr) []byte {
	t.Helper()
	na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: target}
	if mac != nil {
		na.Options = []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}}
	}
	b, err := ndp.MarshalMessage(na)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNDPReply(t *testing.T) {
	ra, _ := ndp.MarshalMessage(&ndp.RouterSolicitation{})
	tests := []struct {
		name     string
		msg      []byte
		src      netip.Addr
		hopLimit int
		owned    func(netip.Addr) bool
		want     verdict
		wantDst  netip.Addr
		solicit  bool
		wantMAC  net.HardwareAddr // where the frame goes; nil: left to the kernel
	}{
		{"owned", nsBytes(t, vip6, clientMAC), client6, 255, owns(vip6), answered, client6, true, clientMAC},
		{"no source link-layer address", nsNoLLA(t, vip6), client6, 255, owns(vip6), answered, client6, true, nil},
		{"duplicate address detection", nsBytes(t, vip6, clientMAC), netip.IPv6Unspecified(), 255, owns(vip6), answered, allNodes, false, allNodesMAC},
		{"not owned", nsBytes(t, vip6, clientMAC), client6, 255, owns(), notOwned, netip.Addr{}, false, nil},
		{"our own", nsBytes(t, vip6, ourMAC), client6, 255, owns(vip6), ownPacket, netip.Addr{}, false, nil},
		{"not a solicitation", ra, client6, 255, owns(vip6), notRequest, netip.Addr{}, false, nil},
		{"garbage", []byte{135, 0, 0}, client6, 255, owns(vip6), malformed, netip.Addr{}, false, nil},
		// RFC 4861 7.1.1: a solicitation whose hop limit is not 255 may come from off the link.
		{"solicitation with hop limit 254", nsBytes(t, vip6, clientMAC), client6, 254, owns(vip6), badHopLimit, netip.Addr{}, false, nil},
		{"solicitation with hop limit 1", nsBytes(t, vip6, clientMAC), client6, 1, owns(vip6), badHopLimit, netip.Addr{}, false, nil},
		{"solicitation with hop limit unknown", nsBytes(t, vip6, clientMAC), client6, -1, owns(vip6), badHopLimit, netip.Addr{}, false, nil},
		{"advertisement with hop limit 64", naBytes(t, vip6, clientMAC), vip6, 64, owns(vip6), badHopLimit, netip.Addr{}, false, nil},
		// Other nodes' claims on an owned address.
		{"advertisement from another node", naBytes(t, vip6, clientMAC), vip6, 255, owns(vip6), conflict, netip.Addr{}, false, nil},
		{"solicitation asked from an owned address", nsBytes(t, client6, clientMAC), vip6, 255, owns(vip6), conflict, netip.Addr{}, false, nil},
		{"our own advertisement", naBytes(t, vip6, ourMAC), vip6, 255, owns(vip6), ownPacket, netip.Addr{}, false, nil},
		{"advertisement for an address not owned", naBytes(t, client6, clientMAC), client6, 255, owns(vip6), notRequest, netip.Addr{}, false, nil},
		{"advertisement without a link-layer address", naBytes(t, vip6, nil), vip6, 255, owns(vip6), notRequest, netip.Addr{}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, cl, v := ndpReply(tt.msg, tt.src, tt.hopLimit, ourMAC, tt.owned)
			if v != tt.want {
				t.Fatalf("verdict %v, want %v", v, tt.want)
			}
			if v == conflict && (cl.ip != vip6 || cl.mac.String() != clientMAC.String()) {
				t.Errorf("claim %s at %s, want %s at %s", cl.ip, cl.mac, vip6, clientMAC)
			}
			if v != answered {
				return
			}
			na, dst := r.na, r.dst
			checkNAFrame(t, r, tt.wantMAC)
			if dst != tt.wantDst || na.TargetAddress != vip6 || !na.Override || na.Solicited != tt.solicit {
				t.Errorf("advertisement %+v to %s", na, dst)
			}
			lla, ok := na.Options[0].(*ndp.LinkLayerAddress)
			if !ok || lla.Direction != ndp.Target || lla.Addr.String() != ourMAC.String() {
				t.Errorf("target link-layer address option %+v", na.Options)
			}
		})
	}
}

func nsNoLLA(t testing.TB, target netip.Addr) []byte {
	t.Helper()
	b, err := ndp.MarshalMessage(&ndp.NeighborSolicitation{TargetAddress: target})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkNAFrame checks the frame an answer goes out in, as a receiver parses it: to the
// solicitor's MAC, IPv6 from the target address itself (what ndisc6 requires), hop limit
// 255, a valid ICMPv6 checksum, and the advertisement inside.
func checkNAFrame(t *testing.T, r reply, wantMAC net.HardwareAddr) {
	t.Helper()
	if r.dstMAC.String() != wantMAC.String() {
		t.Fatalf("answer to MAC %s, want %s", r.dstMAC, wantMAC)
	}
	if wantMAC == nil {
		return
	}
	b, err := r.frame(ourMAC)
	if err != nil {
		t.Fatal(err)
	}
	var f ethernet.Frame
	if err := f.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if f.EtherType != ethernet.EtherTypeIPv6 || f.Destination.String() != wantMAC.String() || f.Source.String() != ourMAC.String() {
		t.Fatalf("frame %s -> %s type %v", f.Source, f.Destination, f.EtherType)
	}
	p := f.Payload
	src, _ := netip.AddrFromSlice(p[8:24])
	dst, _ := netip.AddrFromSlice(p[24:40])
	if p[0]>>4 != 6 || p[6] != 58 || p[7] != 255 || src != r.na.TargetAddress || dst != r.dst || int(p[4])<<8|int(p[5]) != len(p)-40 {
		t.Fatalf("IPv6 header: version %d next %d hop limit %d, %s -> %s", p[0]>>4, p[6], p[7], src, dst)
	}
	if sum := icmpv6Checksum(src, dst, p[40:]); sum != 0 {
		t.Errorf("ICMPv6 checksum does not verify (folds to %#x)", sum)
	}
	m, err := ndp.ParseMessage(p[40:])
	if err != nil {
		t.Fatal(err)
	}
	if na, ok := m.(*ndp.NeighborAdvertisement); !ok || na.TargetAddress != r.na.TargetAddress {
		t.Errorf("frame carries %#v", m)
	}
}

func FuzzARPReply(f *testing.F) {
	f.Add(arpFrame(f, arp.OperationRequest, clientMAC, clientIP, vip))
	f.Add(arpFrame(f, arp.OperationReply, clientMAC, vip, vip))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		reply, _, cl, v := arpReply(b, ourMAC, owns(vip))
		if (v == answered) != (reply != nil) {
			t.Fatalf("verdict %v with reply %x", v, reply)
		}
		if (v == conflict) != (cl.ip == vip && len(cl.mac) > 0 && cl.mac.String() != ourMAC.String()) {
			t.Fatalf("verdict %v with claim %s at %s", v, cl.ip, cl.mac)
		}
	})
}

func FuzzNDPReply(f *testing.F) {
	f.Add(nsBytes(f, vip6, clientMAC), 255)
	f.Add(naBytes(f, vip6, clientMAC), 255)
	f.Add([]byte{135}, 255)
	f.Add(nsBytes(f, vip6, clientMAC), 64)
	f.Fuzz(func(t *testing.T, b []byte, hopLimit int) {
		r, cl, v := ndpReply(b, client6, hopLimit, ourMAC, owns(vip6))
		if (v == answered) != (r.na != nil) {
			t.Fatalf("verdict %v with advertisement %v", v, r.na)
		}
		if hopLimit != 255 && (v == answered || v == conflict) {
			t.Fatalf("verdict %v with hop limit %d", v, hopLimit)
		}
		if (v == conflict) != (cl.ip == vip6 && len(cl.mac) > 0 && cl.mac.String() != ourMAC.String()) {
			t.Fatalf("verdict %v with claim %s at %s", v, cl.ip, cl.mac)
		}
	})
}
