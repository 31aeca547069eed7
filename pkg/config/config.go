package config

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Protocol is how a pool's addresses are announced.
type Protocol uint8

// The protocols a pool can use.
const (
	Layer2 Protocol = iota + 1
	BGP
)

func (p Protocol) String() string {
	switch p {
	case Layer2:
		return "layer2"
	case BGP:
		return "bgp"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Defaults applied where the configuration is silent, as MetalLB 0.12 did.
const (
	DefaultPeerPort          = 179
	DefaultHoldTime          = 90 * time.Second
	DefaultAggregationLength = 32
	DefaultAggregationV6     = 128
)

// Config is a validated configuration.
type Config struct {
	Peers []Peer
	// Communities are the bgp-communities aliases, name to value.
	Communities map[string]Community
	// Pools in the order the document lists them: the order in which they are tried.
	Pools       []Pool
	BFDProfiles []BFDProfile
	// Warnings are the parts of the document Herald accepts but does not do as written,
	// in document order; they do not change the model above.
	Warnings []Warning
}

// Pool returns the pool with the given name.
func (c *Config) Pool(name string) (*Pool, bool) {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i], true
		}
	}
	return nil, false
}

// PoolOf returns the pool that holds addr (pools never overlap); false when none does.
// A nil Config holds nothing.
func (c *Config) PoolOf(addr netip.Addr) (*Pool, bool) {
	if c == nil {
		return nil, false
	}
	for i := range c.Pools {
		if c.Pools[i].Contains(addr) {
			return &c.Pools[i], true
		}
	}
	return nil, false
}

// Pool is a named set of addresses handed out to Services and announced one way.
type Pool struct {
	Name          string
	Protocol      Protocol
	Addresses     []AddressRange // as listed; never overlapping, within or across pools
	AutoAssign    bool           // default true: may be used without being asked for by name
	AvoidBuggyIPs bool           // skip IPv4 addresses ending in .0 or .255
	// Advertisements of a BGP pool; one with the default aggregation when none is listed.
	Advertisements []Advertisement
	// Interfaces limits layer-2 announcements to these interface names (Herald extension).
	Interfaces []string
	// Forward says the speakers forward the pool's traffic with IPVS (Herald extension,
	// default true; forwarding ipvs or endpoints): the announcing node spreads it over the
	// Service's NodePorts or endpoints, and Services get ipMode Proxy. False (forwarding
	// none) leaves the data path to kube-proxy (ipMode VIP), as MetalLB did.
	Forward bool
	// ToEndpoints (forwarding endpoints; only with Forward) sends the traffic straight to
	// the Service's ready endpoints on live nodes, never through a NodePort.
	ToEndpoints bool
	// RelayLocal (relay-local; layer2 pools with forwarding none only) has the node that
	// announces an address hand new flows of its externalTrafficPolicy Local Services,
	// unrewritten, to the other nodes with a ready endpoint, split by the client's source
	// port, so that Local traffic spreads over every such node and keeps the client's
	// address. Herald extension; default false.
	RelayLocal bool
}

// Forwarding values, for the top-level and per-pool key "forwarding".
const (
	ForwardingIPVS      = "ipvs"
	ForwardingEndpoints = "endpoints"
	ForwardingNone      = "none"
)

// Forwarding returns the pool's "forwarding" value: ipvs, endpoints or none.
func (p *Pool) Forwarding() string {
	switch {
	case !p.Forward:
		return ForwardingNone
	case p.ToEndpoints:
		return ForwardingEndpoints
	}
	return ForwardingIPVS
}

// Contains reports whether the pool holds addr.
func (p *Pool) Contains(addr netip.Addr) bool {
	for _, r := range p.Addresses {
		if r.Contains(addr) {
			return true
		}
	}
	return false
}

// AddressRange is the inclusive range First..Last of one address family.
type AddressRange struct {
	First, Last netip.Addr
}

// Contains reports whether addr lies in the range.
func (r AddressRange) Contains(addr netip.Addr) bool {
	return addr.BitLen() == r.First.BitLen() && r.First.Compare(addr) <= 0 && addr.Compare(r.Last) <= 0
}

// Prefixes returns the fewest prefixes that together cover exactly the range.
func (r AddressRange) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	first := r.First
	for {
		// Grow the prefix at first while it stays aligned and inside the range.
		bits := first.BitLen()
		for bits > 0 {
			p, _ := first.Prefix(bits - 1)
			if p.Addr() != first || lastOf(p).Compare(r.Last) > 0 {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(first, bits)
		out = append(out, p)
		last := lastOf(p)
		if last.Compare(r.Last) >= 0 {
			return out
		}
		first = last.Next()
	}
}

// String writes the range as a CIDR when it is exactly one, else as "first-last".
func (r AddressRange) String() string {
	if ps := r.Prefixes(); len(ps) == 1 {
		return ps[0].String()
	}
	return r.First.String() + "-" + r.Last.String()
}

// lastOf returns the highest address in p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Advertisement is how a BGP pool's addresses are advertised.
type Advertisement struct {
	AggregationLength   int // prefix length advertised for IPv4 addresses
	AggregationLengthV6 int // prefix length advertised for IPv6 addresses
	LocalPref           uint32
	Communities         []Community      // sorted, without duplicates
	LargeCommunities    []LargeCommunity // sorted, without duplicates (Herald extension)
}

// Community is a standard BGP community (RFC 1997), written "high:low".
type Community uint32

func (c Community) String() string { return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xffff) }

// LargeCommunity is a BGP large community (RFC 8092), written "global:local1:local2".
type LargeCommunity struct{ Global, Local1, Local2 uint32 }

func (c LargeCommunity) String() string { return fmt.Sprintf("%d:%d:%d", c.Global, c.Local1, c.Local2) }

func compareLarge(a, b LargeCommunity) int {
	if c := cmpU32(a.Global, b.Global); c != 0 {
		return c
	}
	if c := cmpU32(a.Local1, b.Local1); c != 0 {
		return c
	}
	return cmpU32(a.Local2, b.Local2)
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Peer is a BGP router to open sessions with.
type Peer struct {
	Address       netip.Addr
	ASN           uint32 // the router's AS
	MyASN         uint32 // our AS on this session
	Port          uint16
	HoldTime      time.Duration // 0 disables keepalives
	KeepaliveTime time.Duration
	RouterID      netip.Addr // invalid when unset: the node's address is used
	SourceAddress netip.Addr // invalid when unset
	Password      string     // TCP MD5 (RFC 2385)
	EBGPMultiHop  bool
	BFDProfile    string
	// NodeSelectors pick the nodes that peer with this router: any one matching is
	// enough; none means every node.
	NodeSelectors []NodeSelector
}

// SelectsNode reports whether a node with these labels should peer with p.
func (p *Peer) SelectsNode(labels map[string]string) bool {
	if len(p.NodeSelectors) == 0 {
		return true
	}
	return slices.ContainsFunc(p.NodeSelectors, func(s NodeSelector) bool { return s.Matches(labels) })
}

// NodeSelector is a Kubernetes-style label selector over nodes.
type NodeSelector struct {
	MatchLabels      map[string]string
	MatchExpressions []Requirement
}

// Matches reports whether labels satisfy every part of the selector.
func (s NodeSelector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		if !r.Matches(labels) {
			return false
		}
	}
	return true
}

// Requirement is one match-expression: Key Operator Values.
type Requirement struct {
	Key      string
	Operator string // In, NotIn, Exists, DoesNotExist
	Values   []string
}

// Matches reports whether labels satisfy the requirement.
func (r Requirement) Matches(labels map[string]string) bool {
	v, ok := labels[r.Key]
	switch r.Operator {
	case "In":
		return ok && slices.Contains(r.Values, v)
	case "NotIn":
		return !ok || !slices.Contains(r.Values, v)
	case "Exists":
		return ok
	case "DoesNotExist":
		return !ok
	}
	return false
}

// BFDProfile returns the profile called name; false for none (and for "").
func (c *Config) BFDProfile(name string) (BFDProfile, bool) {
	for _, p := range c.BFDProfiles {
		if name != "" && p.Name == name {
			return p, true
		}
	}
	return BFDProfile{}, false
}

// BFDProfile is a named set of BFD session parameters that peers refer to: every peer
// naming one gets a BFD session (pkg/bfd) with them. Zero means "unset". EchoMode and
// EchoInterval are kept as written (MetalLB 0.12 accepts them) but not used: Herald's
// BFD runs in asynchronous mode only, and Parse warns when echo-mode is true.
type BFDProfile struct {
	Name             string
	ReceiveInterval  uint32 // ms
	TransmitInterval uint32 // ms
	DetectMultiplier uint32
	EchoInterval     uint32 // ms
	EchoMode         bool
	PassiveMode      bool
	MinimumTTL       uint32
}
