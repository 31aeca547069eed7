package layer2

import (
	"net"
	"net/netip"

	"github.com/mdlayher/ndp"
)

// allNodes is the link-local all-nodes multicast group, where unsolicited advertisements go.
var allNodes = netip.MustParseAddr("ff02::1")

// ndpReply decides what to do with one received ICMPv6 message from src on a link with
// hardware address mac: the advertisement to send and where to, or why nothing is sent.
func ndpReply(msg []byte, src netip.Addr, mac net.HardwareAddr, owned func(netip.Addr) bool) (*ndp.NeighborAdvertisement, netip.Addr, verdict) {
	m, err := ndp.ParseMessage(msg)
	if err != nil {
		return nil, netip.Addr{}, malformed
	}
	ns, ok := m.(*ndp.NeighborSolicitation)
	if !ok {
		return nil, netip.Addr{}, notRequest
	}
	for _, o := range ns.Options {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Source && string(lla.Addr) == string(mac) {
			return nil, netip.Addr{}, ownPacket
		}
	}
	if !owned(ns.TargetAddress) {
		return nil, netip.Addr{}, notOwned
	}
	na := &ndp.NeighborAdvertisement{
		Solicited:     true,
		Override:      true,
		TargetAddress: ns.TargetAddress,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
	}
	dst := src
	if !src.IsValid() || src.IsUnspecified() {
		// Duplicate address detection: answer to all nodes, unsolicited (RFC 4861 7.2.4).
		na.Solicited, dst = false, allNodes
	}
	return na, dst, answered
}

// unsolicitedNA is the announcement that ip now lives at mac.
func unsolicitedNA(ip netip.Addr, mac net.HardwareAddr) *ndp.NeighborAdvertisement {
	return &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
	}
}
