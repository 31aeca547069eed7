package bfd

import "net/netip"

// Ports where BFD control packets go: single-hop (RFC 5881 §4) and multi-hop (RFC 5883 §5).
const (
	Port         = 3784
	MultihopPort = 4784
)

// Change is a session's change of state.
type Change struct {
	Peer     netip.Addr
	From, To State
	Diag     Diag // why it went down
	// PeerAdminDown: the peer said AdminDown, which is no fault of the path (RFC 5882
	// §3.2: the session's clients must not be taken down for it).
	PeerAdminDown bool
	// PeerDiag is the diagnostic the peer sent with the change.
	PeerDiag Diag
}

// Failed reports whether the change is the path found failing: from Up to Down because
// this side's detection time expired, or because the peer said Down for a fault it
// found on the path (its detection time, echo, forwarding plane or path down).
//
// A peer going Down with no such diagnostic, or saying this side went down when it did
// not ("neighbor signaled session down" to a session that was Up), re-created its side
// of the session: FRR's bgpd has bfdd do it when a BGP session comes up, to bind it to
// the local address. The path carried that very packet: it is no failure, and resetting
// BGP for it would flap every session once as it comes up.
func (c Change) Failed() bool {
	if c.From != Up || c.To != Down || c.PeerAdminDown {
		return false
	}
	switch c.Diag {
	case DiagDetectionExpired:
		return true
	case DiagNeighborDown:
		switch c.PeerDiag {
		case DiagDetectionExpired, 2, 4, 5, 6, 8: // echo failed, forwarding plane reset, path down, concatenated, reverse concatenated
			return true
		}
	}
	return false
}

// Status is one session as it stands.
type Status struct {
	Peer  netip.Addr
	State State
	Diag  Diag // why it last went down
}
