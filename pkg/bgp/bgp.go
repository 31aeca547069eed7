package bgp

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/heraldlb/herald/pkg/bfd"
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
	// RouterID is the BGP identifier this session presents; invalid: the node's.
	RouterID netip.Addr
	// BFD runs a BFD session beside the BGP one with these parameters; zero: none.
	BFD bfd.Config
}

// State is what a session did, as a Speaker tells it.
type State string

// The states a SessionEvent reports.
const (
	Established State = "established"
	Down        State = "down"
	BFDUp       State = "bfd_up"
	BFDDown     State = "bfd_down"
)

// SessionEvent is a BGP or BFD session going up or down.
type SessionEvent struct {
	Peer   netip.Addr
	State  State
	Reason string // why it went down, when known
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
