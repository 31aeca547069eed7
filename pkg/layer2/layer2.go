// Package layer2 is the vocabulary of layer-2 announcement, shared by the plan and the
// announcer: the addresses this node answers ARP and NDP for, and where. It does no I/O;
// package announce (pkg/layer2/announce) is the adapter that answers on real links.
package layer2

import (
	"net/netip"
	"slices"
)

// Address is one address this node answers for, and where.
type Address struct {
	IP netip.Addr
	// Interfaces names the interfaces to answer on; nil means those where the address's
	// subnet is directly connected.
	Interfaces []string
}

// Sort orders addresses by IP.
func Sort(as []Address) {
	slices.SortFunc(as, func(a, b Address) int { return a.IP.Compare(b.IP) })
}
