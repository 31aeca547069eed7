package announce

import (
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
)

// verdict is what became of one received packet.
type verdict uint8

const (
	answered verdict = iota
	malformed
	notRequest
	notOwned
	ownPacket
	// conflict: another hardware address claims an owned address.
	conflict
	// badHopLimit: an NDP message whose hop limit is not 255 (or unknown), which may
	// come from off the link (RFC 4861 7.1).
	badHopLimit
)

func (v verdict) String() string {
	return [...]string{"answered", "malformed", "not_request", "not_owned", "own", "conflict", "hop_limit"}[v]
}

// claim is another node's claim on an owned address: a packet says ip is at mac.
type claim struct {
	ip  netip.Addr
	mac net.HardwareAddr
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpReply decides what to do with one received Ethernet frame on a link with hardware
// address mac: the frame to send back and where to, or why nothing is sent. A packet of
// another hardware address whose sender address is owned (a gratuitous ARP request or
// reply, any reply, a request asked from that address) is a conflict: the claim says who
// claims what; the neighbours that heard it must be told again.
func arpReply(frame []byte, mac net.HardwareAddr, owned func(netip.Addr) bool) ([]byte, net.HardwareAddr, claim, verdict) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil || f.EtherType != ethernet.EtherTypeARP {
		return nil, nil, claim{}, malformed
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		return nil, nil, claim{}, malformed
	}
	if string(p.SenderHardwareAddr) == string(mac) {
		return nil, nil, claim{}, ownPacket
	}
	if p.SenderIP.Is4() && !p.SenderIP.IsUnspecified() && owned(p.SenderIP) {
		return nil, nil, claim{ip: p.SenderIP, mac: p.SenderHardwareAddr}, conflict
	}
	if p.Operation != arp.OperationRequest {
		return nil, nil, claim{}, notRequest
	}
	if !p.TargetIP.Is4() || !owned(p.TargetIP) {
		return nil, nil, claim{}, notOwned
	}
	reply, err := arp.NewPacket(arp.OperationReply, mac, p.TargetIP, p.SenderHardwareAddr, p.SenderIP)
	if err != nil {
		return nil, nil, claim{}, malformed
	}
	b, err := marshalFrame(p.SenderHardwareAddr, mac, reply)
	if err != nil {
		return nil, nil, claim{}, malformed
	}
	return b, p.SenderHardwareAddr, claim{}, answered
}

// gratuitousARP returns the two gratuitous announcements of ip from mac, both broadcast:
// a request and a reply whose sender and target are ip.
func gratuitousARP(ip netip.Addr, mac net.HardwareAddr) ([][]byte, error) {
	var out [][]byte
	req, err := arp.NewPacket(arp.OperationRequest, mac, ip, net.HardwareAddr{0, 0, 0, 0, 0, 0}, ip)
	if err != nil {
		return nil, err
	}
	rep, err := arp.NewPacket(arp.OperationReply, mac, ip, mac, ip)
	if err != nil {
		return nil, err
	}
	for _, p := range []*arp.Packet{req, rep} {
		b, err := marshalFrame(broadcast, mac, p)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func marshalFrame(dst, src net.HardwareAddr, p *arp.Packet) ([]byte, error) {
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	f := ethernet.Frame{Destination: dst, Source: src, EtherType: ethernet.EtherTypeARP, Payload: pb}
	return f.MarshalBinary()
}
