package bgp

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"time"
)

// Peer is a BGP session to open.
type Peer struct {
	Address       netip.Addr
	Port          uint16
	ASN           uint32 // the router's
	MyASN         uint32 // ours on this session
	HoldTime      time.Duration
	KeepaliveTime time.Duration
	Source        netip.Addr // invalid: chosen by the kernel
	Password      string     // TCP MD5 (RFC 2385)
	EBGPMultiHop  bool
}

// Route is one prefix to advertise to every peer of its address family.
type Route struct {
	Prefix           netip.Prefix
	LocalPref        uint32
	Communities      []uint32    // sorted
	LargeCommunities [][3]uint32 // sorted
}

// Equal reports whether two routes advertise the same thing.
func (r Route) Equal(o Route) bool {
	return r.Prefix == o.Prefix && r.LocalPref == o.LocalPref &&
		slices.Equal(r.Communities, o.Communities) && slices.Equal(r.LargeCommunities, o.LargeCommunities)
}

// Speaker opens sessions and advertises routes; both calls take the whole desired set.
type Speaker interface {
	SetPeers(ctx context.Context, peers []Peer) error
	SetRoutes(ctx context.Context, routes []Route) error
}

// SortRoutes orders routes by prefix, for stable output.
func SortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
}
