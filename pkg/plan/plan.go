package plan

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/heraldlb/herald/pkg/bfd"
	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/election"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/layer2"
	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/transport"
)

// Service is a Service with addresses, as the plan needs it.
type Service struct {
	Key   string       // namespace/name
	IPs   []netip.Addr // from its status
	Local bool         // externalTrafficPolicy Local
	// EndpointNodes are the nodes with a ready endpoint of the Service.
	EndpointNodes map[string]bool

	// What forwarding needs (pools that forward):
	Ports     []Port
	Endpoints []Endpoint // ready endpoints only
	Scheduler string     // IPVS scheduler, already checked; "" means forward.DefaultScheduler
	// Persistence is the ClientIP session affinity timeout; 0 for none.
	Persistence  time.Duration
	SourceRanges []netip.Prefix // spec.loadBalancerSourceRanges; empty admits everyone
}

// Port is one port of a Service.
type Port struct {
	Name     string // matches the endpoints' port names
	Proto    transport.Protocol
	Port     uint16
	NodePort uint16 // 0 when the Service has none (allocateLoadBalancerNodePorts false)
}

// Endpoint is one ready endpoint of a Service.
type Endpoint struct {
	Addr  netip.Addr
	Node  string
	Ports map[string]uint16 // target port by port name
	// Terminating: the pod is shutting down but still serving (not ready). Only the
	// relay uses it, as kube-proxy does: a node whose Local pods are all terminating
	// still delivers to them, so its flows stay with it and drain.
	Terminating bool
}

// Node is a cluster node.
type Node struct {
	Name      string
	Ready     bool
	Excluded  bool // labelled node.kubernetes.io/exclude-from-external-load-balancers
	Labels    map[string]string
	Addresses []netip.Addr // InternalIPs
}

// Input is everything a plan depends on.
type Input struct {
	Config   *config.Config
	Services []Service
	Nodes    []Node
	// Members are the live speakers. With UseMembers false (memberlist off), a node's
	// Ready condition stands in for its speaker being alive.
	Members    []string
	UseMembers bool
	// Forwarders are the nodes whose speaker can program IPVS: only they may announce
	// addresses of pools that forward.
	Forwarders map[string]bool
	// Silent are the nodes whose speaker went silent (the failure detector heard nothing
	// from it: the node is dead or cut off), as opposed to one that crashed or left on a
	// node that still runs. Traffic this node forwards goes to none of them: neither
	// their NodePorts nor the endpoints on them, until they are heard again.
	Silent map[string]bool
	Self   string
}

// Desired is what this speaker should do.
type Desired struct {
	// Layer2 are the addresses this node answers ARP/NDP for, sorted.
	Layer2 []layer2.Address
	// BGPPeers are the routers whose node selectors pick this node, in config order.
	BGPPeers []bgp.Peer
	// BGPRoutes are the routes this node advertises to them, sorted.
	BGPRoutes []bgp.Route
	// Forward are the virtual services this node programs for the addresses it
	// announces from pools that forward, sorted by address, protocol, port.
	Forward []forward.Service
	// Relay are the flows this node hands to other nodes for the layer-2 addresses it
	// announces from pools with relay-local, sorted (see RelayRoutes).
	Relay []relay.Route
	// Decisions say, for every address of every Service, who announces it and why this
	// node does or does not; sorted by Service, then address.
	Decisions []Decision
}

// Decision is the outcome for one address of one Service.
type Decision struct {
	Service  string
	IP       netip.Addr
	Pool     string // "" when the address is in no pool
	Protocol config.Protocol
	Owner    string // layer 2: the elected node, "" when none
	// Announcers are, in BGP mode, every node that advertises the address.
	Announcers []string
	Announce   bool            // this node announces it
	Reason     election.Reason // why (0 when the address is in no pool)
	// Refused says this node forwards the address but has nowhere to send some port of
	// the Service (no ready endpoint on a live node, or no live node): the traffic is
	// refused at once (TCP reset, ICMP port unreachable) rather than dropped.
	Refused bool
}

// Compute returns the desired state for in.Self.
func Compute(in Input) Desired {
	var d Desired
	if in.Config == nil {
		return d
	}
	nodes := electionNodes(in)
	d.BGPPeers = peersOf(in)
	routes := map[netip.Prefix]bgp.Route{}
	for _, a := range byAddress(in.Services) {
		pool, _ := in.Config.PoolOf(a.ip)
		dec := decide(in, nodes, a, pool)
		if dec.Announce {
			switch pool.Protocol {
			case config.Layer2:
				d.Layer2 = append(d.Layer2, layer2.Address{IP: a.ip, Interfaces: pool.Interfaces})
			case config.BGP:
				for _, r := range advertise(a.ip, pool.Advertisements) {
					if _, dup := routes[r.Prefix]; !dup {
						routes[r.Prefix] = r
					}
				}
			}
		}
		for _, svc := range a.svcs {
			dec.Service, dec.Refused = svc.Key, false
			if dec.Announce && pool.Forward {
				fwd := forwards(a.ip, svc, in, pool.ToEndpoints)
				dec.Refused = slices.ContainsFunc(fwd, func(f forward.Service) bool { return len(f.RealServers) == 0 })
				d.Forward = append(d.Forward, fwd...)
			}
			if dec.Announce && pool.RelayLocal && pool.Protocol == config.Layer2 && !pool.Forward {
				d.Relay = append(d.Relay, RelayRoutes(a.ip, svc, in, nodes)...)
			}
			d.Decisions = append(d.Decisions, dec)
		}
	}
	layer2.Sort(d.Layer2)
	for _, r := range routes {
		d.BGPRoutes = append(d.BGPRoutes, r)
	}
	bgp.SortRoutes(d.BGPRoutes)
	forward.Sort(d.Forward)
	relay.Sort(d.Relay)
	// Two Services sharing an address never share a port either.
	d.Relay = slices.CompactFunc(d.Relay, func(a, b relay.Route) bool {
		return a.VIP == b.VIP && a.Proto == b.Proto && a.Port == b.Port && a.From == b.From
	})
	// Services sharing an address never share a port (the controller refuses that); if
	// they did, the first one would win.
	d.Forward = slices.CompactFunc(d.Forward, func(a, b forward.Service) bool { return a.Key() == b.Key() })
	slices.SortFunc(d.Decisions, func(a, b Decision) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), a.IP.Compare(b.IP))
	})
	return d
}

// node is a node as the election sees it, with what BGP selection needs besides.
type node struct {
	election.Node
	peered [2]bool // by family (0: IPv4, 1: IPv6): some BGP peer of that family selects it
	addrs  []netip.Addr
}

// electionNodes returns every node as the election sees it, sorted by name.
func electionNodes(in Input) []node {
	alive := map[string]bool{}
	for _, m := range in.Members {
		alive[m] = true
	}
	out := make([]node, 0, len(in.Nodes))
	for _, n := range in.Nodes {
		en := node{Node: election.Node{
			Name:         n.Name,
			SpeakerAlive: (in.UseMembers && alive[n.Name]) || (!in.UseMembers && n.Ready),
			Ready:        n.Ready,
			Excluded:     n.Excluded,
			Selected:     true,
			CanForward:   in.Forwarders[n.Name],
		}, addrs: n.Addresses}
		for _, p := range in.Config.Peers {
			if p.SelectsNode(n.Labels) {
				en.peered[family(p.Address)] = true
			}
		}
		out = append(out, en)
	}
	slices.SortFunc(out, func(a, b node) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// peersOf returns the BGP sessions in.Self opens: the peers whose node selectors pick it.
func peersOf(in Input) []bgp.Peer {
	i := slices.IndexFunc(in.Nodes, func(n Node) bool { return n.Name == in.Self })
	if i < 0 {
		return nil
	}
	var out []bgp.Peer
	for _, p := range in.Config.Peers {
		if p.SelectsNode(in.Nodes[i].Labels) {
			bp := bgp.Peer{
				Address: p.Address, Port: p.Port, ASN: p.ASN, MyASN: p.MyASN,
				HoldTime: p.HoldTime, KeepaliveTime: p.KeepaliveTime, Source: p.SourceAddress,
				Password: p.Password, EBGPMultiHop: p.EBGPMultiHop, RouterID: p.RouterID,
			}
			if prof, ok := in.Config.BFDProfile(p.BFDProfile); ok {
				bp.BFD = bfdConfig(prof, p.EBGPMultiHop)
			}
			out = append(out, bp)
		}
	}
	return out
}

// bfdConfig is a BFD profile as a session's parameters: multi-hop for a peer more than
// one hop away.
func bfdConfig(p config.BFDProfile, multihop bool) bfd.Config {
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	return bfd.Config{
		DesiredMinTx: ms(p.TransmitInterval), RequiredMinRx: ms(p.ReceiveInterval),
		DetectMult: uint8(p.DetectMultiplier), Passive: p.PassiveMode,
		Multihop: multihop, MinTTL: uint8(p.MinimumTTL),
	}.WithDefaults()
}

// address is one Service address and the Services that hold it: Services sharing an
// address are elected together, on the union of their endpoints.
type address struct {
	ip   netip.Addr
	svc  election.Service
	svcs []*Service
}

// byAddress groups the Services' addresses, sorted by address.
func byAddress(services []Service) []*address {
	byIP := map[netip.Addr]*address{}
	var out []*address
	for i := range services {
		s := &services[i]
		for _, ip := range s.IPs {
			a := byIP[ip]
			if a == nil {
				a = &address{ip: ip, svc: election.Service{EndpointNodes: map[string]bool{}}}
				byIP[ip] = a
				out = append(out, a)
			}
			a.svc.Local = a.svc.Local || s.Local
			for n, ok := range s.EndpointNodes {
				if ok {
					a.svc.EndpointNodes[n] = true
				}
			}
			a.svcs = append(a.svcs, s)
		}
	}
	slices.SortFunc(out, func(a, b *address) int { return a.ip.Compare(b.ip) })
	return out
}

// decide elects who announces one address and says whether in.Self does, and why.
func decide(in Input, nodes []node, a *address, pool *config.Pool) Decision {
	dec := Decision{IP: a.ip}
	if pool == nil {
		return dec
	}
	dec.Pool, dec.Protocol = pool.Name, pool.Protocol
	svc := a.svc
	svc.Forward = pool.Forward
	en := make([]election.Node, len(nodes))
	for i, n := range nodes {
		en[i] = n.Node
		// A node that no BGP peer of the address's family selects has nowhere to
		// advertise it.
		en[i].Selected = pool.Protocol != config.BGP || n.peered[family(a.ip)]
	}
	if svc.Local && svc.Forward && !slices.ContainsFunc(en, func(n election.Node) bool { ok, _ := election.Eligible(n, svc); return ok }) {
		// No node with a ready endpoint can take the traffic of this Local Service: it is
		// elected as a Cluster one, so that a node announces it and refuses its traffic
		// at once (it has no endpoint of its own to send it to) rather than nobody
		// answering and the clients waiting.
		svc.Local = false
	}
	if pool.Protocol == config.Layer2 {
		dec.Owner, _ = election.Owner(a.ip, en, svc)
		dec.Announce, dec.Reason = election.Layer2(in.Self, a.ip, en, svc)
		if dec.Owner == "" && dec.Reason == election.NotOwner {
			dec.Reason = election.NoEligibleNode
		}
		return dec
	}
	dec.Announcers = election.Announcers(en, svc)
	dec.Announce = slices.Contains(dec.Announcers, in.Self)
	switch i := slices.IndexFunc(en, func(n election.Node) bool { return n.Name == in.Self }); {
	case dec.Announce:
		dec.Reason = election.Announcing
	case i < 0:
		dec.Reason = election.NoEligibleNode
	default:
		_, dec.Reason = election.Eligible(en[i], svc)
	}
	return dec
}

// forwards returns the virtual services for one address of svc, one per port, with
// the real servers RealServers picks.
func forwards(vip netip.Addr, svc *Service, in Input, toEndpoints bool) []forward.Service {
	var out []forward.Service
	for _, p := range svc.Ports {
		f := forward.Service{
			VIP: vip, Port: p.Port, Proto: p.Proto, Scheduler: svc.Scheduler,
			Persistence: svc.Persistence, Masquerade: !svc.Local,
			RealServers: RealServers(vip, svc, p, in, toEndpoints),
		}
		for _, r := range svc.SourceRanges {
			if r.Addr().Is4() == vip.Is4() {
				f.SourceRanges = append(f.SourceRanges, r)
			}
		}
		out = append(out, f)
	}
	return out
}

// RealServers returns, sorted, where in.Self sends the traffic for vip and port p of svc:
//
//   - Local: this node's ready endpoints, at their target ports (the client's address is
//     kept, so the replies must leave from this node);
//   - Cluster, in a pool that forwards to endpoints (toEndpoints) or for a Service
//     without NodePorts: every ready endpoint, wherever it runs;
//   - Cluster otherwise: the NodePort on every Ready node, kube-proxy's second hop.
//
// Whatever the case, nothing on a node in in.Silent: a node whose speaker went silent
// is taken to be dead or cut off, from the moment the failure detector says so rather
// than when the node controller marks it NotReady. Real servers are of vip's family.
// Empty means the traffic has nowhere to go.
func RealServers(vip netip.Addr, svc *Service, p Port, in Input, toEndpoints bool) []forward.RealServer {
	var out []forward.RealServer
	if !svc.Local && !toEndpoints && p.NodePort != 0 {
		for _, n := range in.Nodes {
			if !n.Ready || in.Silent[n.Name] {
				continue
			}
			if n.Name == in.Self {
				// Not this node's own NodePort: IPVS hands a packet for a local real server
				// to the local stack after prerouting, where kube-proxy's NodePort DNAT
				// lives, and no socket listens on a NodePort, so it would be reset. This
				// node's own ready endpoints take its place.
				out = append(out, localEndpoints(vip, svc, p, in.Self)...)
				continue
			}
			if i := slices.IndexFunc(n.Addresses, func(a netip.Addr) bool { return a.Is4() == vip.Is4() }); i >= 0 {
				out = append(out, forward.RealServer{Addr: n.Addresses[i], Port: p.NodePort})
			}
		}
	} else {
		for _, e := range svc.Endpoints {
			port, ok := e.Ports[p.Name]
			if !ok || e.Terminating || e.Addr.Is4() != vip.Is4() || in.Silent[e.Node] || (svc.Local && e.Node != in.Self) {
				continue
			}
			out = append(out, forward.RealServer{Addr: e.Addr, Port: port})
		}
	}
	slices.SortFunc(out, forward.RealServer.Compare)
	return slices.Compact(out)
}

// RelayRoutes returns the flows in.Self hands on for vip, which it announces in layer 2,
// of svc's ports: for a Local Service without session affinity, each TCP and UDP port
// split (relay.Split) over the nodes that may announce it (a live speaker, Ready, not
// excluded), are not silent, have an address of vip's family, and hold an endpoint of
// svc with that port and of vip's family, ready or terminating but still serving —
// kube-proxy there delivers to its own pods only, to terminating ones when it has no
// ready one, so a pod shutting down drains the flows it holds. ClientIP affinity keeps every flow on this node: its own
// endpoint keeps the client, as kube-proxy there promises. A Cluster Service needs no
// relay: kube-proxy on this node spreads it already.
func RelayRoutes(vip netip.Addr, svc *Service, in Input, nodes []node) []relay.Route {
	if !svc.Local || svc.Persistence > 0 {
		return nil
	}
	var out []relay.Route
	for _, p := range svc.Ports {
		if p.Proto != transport.TCP && p.Proto != transport.UDP {
			continue
		}
		serving := map[string]bool{}
		for _, e := range svc.Endpoints {
			if _, ok := e.Ports[p.Name]; ok && e.Addr.Is4() == vip.Is4() {
				serving[e.Node] = true
			}
		}
		es := election.Service{Local: true, EndpointNodes: serving}
		targets := map[string]netip.Addr{}
		for _, n := range nodes {
			if ok, _ := election.Eligible(n.Node, es); !ok || in.Silent[n.Name] {
				continue
			}
			if n.Name == in.Self {
				targets[n.Name] = vip // kept here: no address needed
				continue
			}
			// Never the address itself: relayed to it, the flow would come back here.
			if k := slices.IndexFunc(n.addrs, func(a netip.Addr) bool { return a.Is4() == vip.Is4() && a != vip }); k >= 0 {
				targets[n.Name] = n.addrs[k]
			}
		}
		out = append(out, relay.Split(vip, p.Proto, p.Port, in.Self, targets)...)
	}
	return out
}

// localEndpoints are node's ready endpoints of svc's port p, of vip's family.
func localEndpoints(vip netip.Addr, svc *Service, p Port, node string) []forward.RealServer {
	var out []forward.RealServer
	for _, e := range svc.Endpoints {
		if port, ok := e.Ports[p.Name]; ok && !e.Terminating && e.Node == node && e.Addr.Is4() == vip.Is4() {
			out = append(out, forward.RealServer{Addr: e.Addr, Port: port})
		}
	}
	return out
}

// advertise turns an address into the routes its pool's advertisements ask for. Two
// Services in one aggregate give one route: the first advertisement of a prefix wins.
func advertise(ip netip.Addr, advs []config.Advertisement) []bgp.Route {
	var out []bgp.Route
	for _, a := range advs {
		bits := a.AggregationLength
		if ip.Is6() {
			bits = a.AggregationLengthV6
		}
		prefix, err := ip.Prefix(bits)
		if err != nil {
			continue // config.Parse guarantees a length the address family has
		}
		r := bgp.Route{Prefix: prefix, LocalPref: a.LocalPref}
		for _, c := range a.Communities {
			r.Communities = append(r.Communities, uint32(c))
		}
		for _, c := range a.LargeCommunities {
			r.LargeCommunities = append(r.LargeCommunities, [3]uint32{c.Global, c.Local1, c.Local2})
		}
		out = append(out, r)
	}
	return out
}
