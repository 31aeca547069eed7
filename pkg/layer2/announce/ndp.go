package announce

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// allNodes is the link-local all-nodes multicast group, where unsolicited advertisements go.
var allNodes = netip.MustParseAddr("ff02::1")

// allNodesMAC is allNodes' Ethernet multicast address (RFC 2464 7).
var allNodesMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}

// reply is an advertisement to send: from the target address itself, to dst at dstMAC.
// dstMAC is nil when the solicitation did not say where its sender is (no source
// link-layer address option): the kernel must then resolve it, and send it from the
// link-local address.
type reply struct {
	na     *ndp.NeighborAdvertisement
	dst    netip.Addr
	dstMAC net.HardwareAddr
}

// ndpReply decides what to do with one received ICMPv6 message from src, which arrived
// with the given hop limit (-1: unknown), on a link with hardware address mac: the
// advertisement to send and where to, or why nothing is sent. A solicitation or
// advertisement of another hardware address that claims an owned address (an
// advertisement for it, a solicitation sent from it) is a conflict: the claim says who
// claims what.
func ndpReply(msg []byte, src netip.Addr, hopLimit int, mac net.HardwareAddr, owned func(netip.Addr) bool) (reply, claim, verdict) {
	m, err := ndp.ParseMessage(msg)
	if err != nil {
		return reply{}, claim{}, malformed
	}
	switch m := m.(type) {
	case *ndp.NeighborSolicitation:
		if hopLimit != 255 {
			return reply{}, claim{}, badHopLimit
		}
		return solicited(m, src, mac, owned)
	case *ndp.NeighborAdvertisement:
		if hopLimit != 255 {
			return reply{}, claim{}, badHopLimit
		}
		lla := linkLayer(m.Options, ndp.Target)
		switch {
		case lla == nil:
			return reply{}, claim{}, notRequest // changes no neighbour's entry
		case string(lla) == string(mac):
			return reply{}, claim{}, ownPacket
		case owned(m.TargetAddress):
			return reply{}, claim{ip: m.TargetAddress, mac: lla}, conflict
		}
	}
	return reply{}, claim{}, notRequest
}

// linkLayer returns the link-layer address option of the given direction, nil if none.
func linkLayer(opts []ndp.Option, dir ndp.Direction) net.HardwareAddr {
	var out net.HardwareAddr
	for _, o := range opts {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == dir {
			out = lla.Addr
		}
	}
	return out
}

func solicited(ns *ndp.NeighborSolicitation, src netip.Addr, mac net.HardwareAddr, owned func(netip.Addr) bool) (reply, claim, verdict) {
	from := linkLayer(ns.Options, ndp.Source)
	if from != nil && string(from) == string(mac) {
		return reply{}, claim{}, ownPacket
	}
	if from != nil && src.IsValid() && !src.IsUnspecified() && owned(src) {
		// Asked from an owned address: every neighbour that hears it learns that the
		// address is at from.
		return reply{}, claim{ip: src, mac: from}, conflict
	}
	if !owned(ns.TargetAddress) {
		return reply{}, claim{}, notOwned
	}
	r := reply{
		na: &ndp.NeighborAdvertisement{
			Solicited:     true,
			Override:      true,
			TargetAddress: ns.TargetAddress,
			Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
		},
		dst: src, dstMAC: from,
	}
	if !src.IsValid() || src.IsUnspecified() {
		// Duplicate address detection: answer to all nodes, unsolicited (RFC 4861 7.2.4).
		r.na.Solicited, r.dst, r.dstMAC = false, allNodes, allNodesMAC
	}
	return r, claim{}, answered
}

// unsolicitedNA is the announcement that ip now lives at mac, to all nodes.
func unsolicitedNA(ip netip.Addr, mac net.HardwareAddr) reply {
	return reply{
		na: &ndp.NeighborAdvertisement{
			Override:      true,
			TargetAddress: ip,
			Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
		},
		dst: allNodes, dstMAC: allNodesMAC,
	}
}

// frame builds the Ethernet frame carrying r from srcMAC, as Linux sends an
// advertisement: the IPv6 source is the target address itself (tools such as ndisc6
// accept nothing else), hop limit 255 (RFC 4861 7.1.2).
func (r reply) frame(srcMAC net.HardwareAddr) ([]byte, error) {
	icmp, err := ndp.MarshalMessage(r.na)
	if err != nil {
		return nil, err
	}
	src := r.na.TargetAddress
	binary.BigEndian.PutUint16(icmp[2:4], 0)
	binary.BigEndian.PutUint16(icmp[2:4], icmpv6Checksum(src, r.dst, icmp))
	pkt := make([]byte, 40, 40+len(icmp))
	pkt[0] = 6 << 4 // version 6, traffic class and flow label 0
	binary.BigEndian.PutUint16(pkt[4:6], uint16(len(icmp)))
	pkt[6] = 58 // ICMPv6
	pkt[7] = 255
	s, d := src.As16(), r.dst.As16()
	copy(pkt[8:24], s[:])
	copy(pkt[24:40], d[:])
	pkt = append(pkt, icmp...)
	f := ethernet.Frame{Destination: r.dstMAC, Source: srcMAC, EtherType: ethernet.EtherTypeIPv6, Payload: pkt}
	return f.MarshalBinary()
}

// icmpv6Checksum is the ICMPv6 checksum of msg (its checksum field zero) from src to dst
// (RFC 4443 2.3, over the RFC 8200 8.1 pseudo-header).
func icmpv6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	var l [8]byte
	binary.BigEndian.PutUint32(l[0:4], uint32(len(msg)))
	l[7] = 58
	add(l[:])
	add(msg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
