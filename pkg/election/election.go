package election

import (
	"fmt"
	"net/netip"
	"slices"
)

// Node is a node as the election sees it.
type Node struct {
	Name         string
	SpeakerAlive bool // its speaker is a live member
	Ready        bool // the node's Ready condition is True
	Excluded     bool // labelled node.kubernetes.io/exclude-from-external-load-balancers
	// Selected says the announcement's node selectors match the node (BGP peers and
	// pools may select nodes); true when nothing selects.
	Selected bool
	// CanForward says the node's speaker can program IPVS; consulted only for Services
	// whose pool forwards.
	CanForward bool
}

// Reason says why a node does or does not announce an address.
type Reason uint8

// The reasons.
const (
	Announcing      Reason = iota + 1 // this node announces the address
	NotOwner                          // eligible, but another node owns the address
	SpeakerDown                       // the node's speaker is not a live member
	NodeNotReady                      // the node is not Ready
	NodeExcluded                      // the node opts out of external load balancers
	NotSelected                       // node selectors leave the node out
	NoLocalEndpoint                   // Local traffic policy and no ready endpoint on the node
	NoEligibleNode                    // no node at all may announce the address
	CannotForward                     // the pool forwards and the node's kernel has no IPVS
)

func (r Reason) String() string {
	switch r {
	case Announcing:
		return "announcing"
	case NotOwner:
		return "not_owner"
	case SpeakerDown:
		return "speaker_down"
	case NodeNotReady:
		return "node_not_ready"
	case NodeExcluded:
		return "node_excluded"
	case NotSelected:
		return "not_selected"
	case NoLocalEndpoint:
		return "no_local_endpoint"
	case NoEligibleNode:
		return "no_eligible_node"
	case CannotForward:
		return "cannot_forward"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Service is what the election needs to know of the Service(s) behind one address.
type Service struct {
	// Local is true for externalTrafficPolicy Local: only nodes with a ready endpoint
	// may announce.
	Local bool
	// EndpointNodes are the nodes with a ready endpoint; consulted only when Local.
	EndpointNodes map[string]bool
	// Forward is true when the address's pool forwards: only nodes that can program
	// IPVS may announce it, so that traffic is never drawn to a node that drops it.
	Forward bool
}

// Eligible reports whether n may announce an address of svc, and if not, why.
func Eligible(n Node, svc Service) (bool, Reason) {
	switch {
	case !n.SpeakerAlive:
		return false, SpeakerDown
	case !n.Ready:
		return false, NodeNotReady
	case n.Excluded:
		return false, NodeExcluded
	case !n.Selected:
		return false, NotSelected
	case svc.Forward && !n.CanForward:
		return false, CannotForward
	case svc.Local && !svc.EndpointNodes[n.Name]:
		return false, NoLocalEndpoint
	}
	return true, Announcing
}

// Owner returns the single node that announces ip in layer-2 mode, or false when no node
// is eligible.
func Owner(ip netip.Addr, nodes []Node, svc Service) (string, bool) {
	best, bestScore, found := "", uint64(0), false
	for _, n := range nodes {
		if ok, _ := Eligible(n, svc); !ok {
			continue
		}
		s := score(n.Name, ip)
		if !found || s > bestScore || (s == bestScore && n.Name < best) {
			best, bestScore, found = n.Name, s, true
		}
	}
	return best, found
}

// Layer2 reports whether self announces ip in layer-2 mode, and why.
func Layer2(self string, ip netip.Addr, nodes []Node, svc Service) (bool, Reason) {
	i := slices.IndexFunc(nodes, func(n Node) bool { return n.Name == self })
	if i < 0 {
		return false, SpeakerDown
	}
	if ok, why := Eligible(nodes[i], svc); !ok {
		return false, why
	}
	owner, _ := Owner(ip, nodes, svc)
	if owner != self {
		return false, NotOwner
	}
	return true, Announcing
}

// Announcers returns every node that announces an address of svc in BGP mode, sorted.
func Announcers(nodes []Node, svc Service) []string {
	var out []string
	for _, n := range nodes {
		if ok, _ := Eligible(n, svc); ok {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out
}

// score is the rendezvous weight of (node, ip): FNV-1a over both, then a 64-bit
// finalizer (splitmix64) so that names differing in one character still spread evenly.
func score(node string, ip netip.Addr) uint64 {
	a := ip.As16()
	return scoreKey(node, a[:])
}

// scoreKey is score over any key: FNV-1a over the node's name, a zero byte and the key,
// then splitmix64's finalizer. score's key is the address's 16 bytes.
func scoreKey(node string, key []byte) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(node); i++ {
		h = (h ^ uint64(node[i])) * prime
	}
	h = (h ^ 0) * prime
	for _, c := range key {
		h = (h ^ uint64(c)) * prime
	}
	h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9
	h = (h ^ (h >> 27)) * 0x94d049bb133111eb
	return h ^ (h >> 31)
}

// Spread hands each of n buckets of one flow key (an address, a protocol and a port,
// as the caller encodes them) to one of nodes by rendezvous hashing: out[i] is bucket
// i's node. A node that joins or leaves moves only the buckets it gains or held; the
// others keep theirs. Empty nodes give nil.
func Spread(key []byte, nodes []string, n int) []string {
	if len(nodes) == 0 || n <= 0 {
		return nil
	}
	out := make([]string, n)
	k := append(slices.Clip(key), 0, 0)
	for b := range n {
		k[len(k)-2], k[len(k)-1] = byte(b>>8), byte(b)
		var best string
		var bestScore uint64
		for i, node := range nodes {
			s := scoreKey(node, k)
			if i == 0 || s > bestScore || (s == bestScore && node < best) {
				best, bestScore = node, s
			}
		}
		out[b] = best
	}
	return out
}
