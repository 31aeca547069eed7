package relay

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"

	"github.com/heraldlb/herald/pkg/election"
	"github.com/heraldlb/herald/pkg/transport"
)

// Route hands the flows to VIP:Port/Proto whose client source port lies in
// [From, To] to the node at Via.
type Route struct {
	VIP      netip.Addr
	Proto    transport.Protocol
	Port     uint16
	From, To uint16     // client source ports, inclusive
	Via      netip.Addr // the node's address, of VIP's family
	Node     string     // its name, for logs
}

// Compare orders routes by address, protocol, port, then source ports.
func (r Route) Compare(o Route) int {
	return cmp.Or(r.VIP.Compare(o.VIP), cmp.Compare(r.Proto, o.Proto), cmp.Compare(r.Port, o.Port),
		cmp.Compare(r.From, o.From), cmp.Compare(r.To, o.To))
}

// Sort orders routes with Compare.
func Sort(rs []Route) { slices.SortFunc(rs, Route.Compare) }

// Buckets is how many source-port ranges one port's flows are split into: enough that
// the ephemeral ports clients use (32768–60999 on Linux, 49152–65535 on Windows) span
// several, few enough that a relayed port costs the owner at most Buckets policy rules.
const Buckets = 32

// The source ports that are split. The kernel's policy rules refuse a port range that
// touches 0 or 65535, so flows from those two ports always stay with the owner.
const (
	FirstPort = 1
	LastPort  = 65534
)

// BucketPorts returns bucket b's source ports, inclusive.
func BucketPorts(b int) (from, to uint16) {
	const width = (LastPort - FirstPort + 1 + Buckets - 1) / Buckets
	lo := FirstPort + b*width
	return uint16(lo), uint16(min(lo+width-1, LastPort))
}

// Split returns the routes that spread the flows of vip:port/proto over nodes (name →
// address of vip's family; self among them, at any address, when it has an endpoint of
// its own): each
// bucket to one node, adjacent buckets of one node merged into one route, none for the
// buckets self keeps. Sorted.
func Split(vip netip.Addr, proto transport.Protocol, port uint16, self string, nodes map[string]netip.Addr) []Route {
	if _, kept := nodes[self]; len(nodes) == 0 || (len(nodes) == 1 && kept) {
		return nil
	}
	names := slices.Sorted(maps.Keys(nodes))
	a := vip.As16()
	key := append(a[:], byte(proto), byte(port>>8), byte(port))
	var out []Route
	for b, node := range election.Spread(key, names, Buckets) {
		from, to := BucketPorts(b)
		if node == self {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Node == node && out[n-1].To+1 == from {
			out[n-1].To = to
			continue
		}
		out = append(out, Route{VIP: vip, Proto: proto, Port: port, From: from, To: to, Via: nodes[node], Node: node})
	}
	return out
}
