package relay

import (
	"cmp"
	"fmt"
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

// Partial is the error of a relay that installed every route it could and left Left of
// them out, for reasons that trying again alone does not change (forwarding off, an
// address local to the node, a node no link reaches, a bound reached): what is in the
// kernel is whole, and the flows left out stay with this node. The caller reports it; it
// is not a failure to retry, so that the next plan is applied at once.
type Partial struct {
	Left int
	Err  error
}

func (p *Partial) Error() string {
	return fmt.Sprintf("%d source-port ranges left with this node: %v", p.Left, p.Err)
}

func (p *Partial) Unwrap() error { return p.Err }

// Compare orders routes by address, protocol, port, then source ports.
func (r Route) Compare(o Route) int {
	return cmp.Or(r.VIP.Compare(o.VIP), cmp.Compare(r.Proto, o.Proto), cmp.Compare(r.Port, o.Port),
		cmp.Compare(r.From, o.From), cmp.Compare(r.To, o.To))
}

// Sort orders routes with Compare.
func Sort(rs []Route) { slices.SortFunc(rs, Route.Compare) }

// Buckets is how many source-port ranges one port's flows are split into. Clients take
// their source ports from the upper half (32768–60999 on Linux, 49152–65535 on Windows and
// by IANA), so that half has 60 narrow buckets (547 ports each) and the lower half 4 wide
// ones: a Linux client's flows fall into about 52 buckets, a Windows client's into about
// 30, so even with many nodes each gets a share. A relayed port costs the owner at most
// Buckets policy rules.
const Buckets = 64

// The source ports that are split. The kernel's policy rules refuse a port range that
// touches 0 or 65535, so flows from those two ports always stay with the owner.
const (
	FirstPort = 1
	LastPort  = 65534
)

const (
	lowBuckets = 4
	lowWidth   = 8192 // 1–32767 in 4
	highFirst  = 32768
	highWidth  = 547 // 32768–65534 in 60
)

// BucketPorts returns bucket b's source ports, inclusive; b is in [0, Buckets).
func BucketPorts(b int) (from, to uint16) {
	if b < 0 || b >= Buckets {
		panic(fmt.Sprintf("relay: bucket %d out of [0, %d)", b, Buckets))
	}
	if b < lowBuckets {
		lo := FirstPort + b*lowWidth
		return uint16(lo), uint16(min(lo+lowWidth-1, highFirst-1))
	}
	lo := highFirst + (b-lowBuckets)*highWidth
	return uint16(lo), uint16(min(lo+highWidth-1, LastPort))
}

// Bucket returns the bucket of source port port, or -1 for the two ports never split.
func Bucket(port uint16) int {
	switch {
	case port < FirstPort || port > LastPort:
		return -1
	case port < highFirst:
		return int(port-FirstPort) / lowWidth
	default:
		return lowBuckets + int(port-highFirst)/highWidth
	}
}

// NodeOf returns the node that takes the flows from source port sport under rs, the
// routes of one address, protocol and port (as Split returns them), and self for the
// flows no route hands on.
func NodeOf(rs []Route, sport uint16, self string) string {
	for _, r := range rs {
		if r.From <= sport && sport <= r.To {
			return r.Node
		}
	}
	return self
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
