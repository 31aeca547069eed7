package plan

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/election"
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
	Scheduler string     // IPVS scheduler, already checked; "" means rr
	// Persistence is the ClientIP session affinity timeout; 0 for none.
	Persistence  time.Duration
	SourceRanges []netip.Prefix // spec.loadBalancerSourceRanges; empty admits everyone
}

// Port is one port of a Service.
type Port struct {
	Name     string // matches the endpoints' port names
	Proto    string // TCP, UDP or SCTP
	Port     uint16
	NodePort uint16 // 0 when the Service has none (allocateLoadBalancerNodePorts false)
}

// Endpoint is one ready endpoint of a Service.
type Endpoint struct {
	Addr  netip.Addr
	Node  string
	Ports map[string]uint16 // target port by port name
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
	Self       string
}

// Desired is what this speaker should do.
type Desired struct {
	// Layer2 are the addresses this node answers ARP/NDP for, sorted.
	Layer2 []Layer2
	// BGPPeers are the routers whose node selectors pick this node, in config order.
	BGPPeers []bgp.Peer
	// BGPRoutes are the routes this node advertises to them, sorted.
	BGPRoutes []bgp.Route
	// Forward are the virtual services this node programs for the addresses it
	// announces from pools that forward, sorted by address, protocol, port.
	Forward []Forward
	// Decisions say, for every address of every Service, who announces it and why this
	// node does or does not; sorted by Service, then address.
	Decisions []Decision
}

// Layer2 is one address to answer for.
type Layer2 struct {
	IP         netip.Addr
	Interfaces []string // from the pool; nil: where the subnet is connected
}

// Schedulers are the IPVS schedulers a Service may ask for; the first is the default.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq", "mh"}

// Forward is one virtual service: traffic to VIP:Port/Proto goes to RealServers.
type Forward struct {
	VIP          netip.Addr
	Port         uint16
	Proto        string
	Scheduler    string
	Persistence  time.Duration
	SourceRanges []netip.Prefix // of the VIP's family
	// Masquerade is true for externalTrafficPolicy Cluster: the real servers see this
	// node as the source, so that replies come back through it. Local keeps the client's.
	Masquerade  bool
	RealServers []RealServer // sorted
}

// RealServer is one destination of a virtual service.
type RealServer struct {
	Addr netip.Addr
	Port uint16
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
}

// Compute returns the desired state for in.Self.
func Compute(in Input) Desired {
	var d Desired
	if in.Config == nil {
		return d
	}
	alive := map[string]bool{}
	for _, m := range in.Members {
		alive[m] = true
	}
	nodes := make([]election.Node, 0, len(in.Nodes))
	for _, n := range in.Nodes {
		nodes = append(nodes, election.Node{
			Name:         n.Name,
			SpeakerAlive: (in.UseMembers && alive[n.Name]) || (!in.UseMembers && n.Ready),
			Ready:        n.Ready,
			Excluded:     n.Excluded,
			Selected:     true,
			CanForward:   in.Forwarders[n.Name],
		})
	}
	slices.SortFunc(nodes, func(a, b election.Node) int { return cmp.Compare(a.Name, b.Name) })
	for _, n := range in.Nodes {
		if n.Name != in.Self {
			continue
		}
		for _, p := range in.Config.Peers {
			if p.SelectsNode(n.Labels) {
				d.BGPPeers = append(d.BGPPeers, bgp.Peer{
					Address: p.Address, Port: p.Port, ASN: p.ASN, MyASN: p.MyASN,
					HoldTime: p.HoldTime, KeepaliveTime: p.KeepaliveTime, Source: p.SourceAddress,
					Password: p.Password, EBGPMultiHop: p.EBGPMultiHop,
				})
			}
		}
	}
	routes := map[netip.Prefix]bgp.Route{}

	// Services that share an address are elected together: the union of their endpoints.
	type shared struct {
		svc  election.Service
		keys []string
		svcs []*Service
	}
	byIP := map[netip.Addr]*shared{}
	for _, s := range in.Services {
		for _, ip := range s.IPs {
			sh := byIP[ip]
			if sh == nil {
				sh = &shared{svc: election.Service{Local: s.Local, EndpointNodes: map[string]bool{}}}
				byIP[ip] = sh
			}
			sh.svc.Local = sh.svc.Local || s.Local
			for n, ok := range s.EndpointNodes {
				if ok {
					sh.svc.EndpointNodes[n] = true
				}
			}
			sh.keys = append(sh.keys, s.Key)
			sh.svcs = append(sh.svcs, &s)
		}
	}

	for ip, sh := range byIP {
		pool, _ := in.Config.PoolOf(ip)
		sh.svc.Forward = pool != nil && pool.Forward
		dec := Decision{IP: ip}
		var announce bool
		if pool != nil {
			dec.Pool, dec.Protocol = pool.Name, pool.Protocol
			if pool.Protocol == config.Layer2 {
				dec.Owner, _ = election.Owner(ip, nodes, sh.svc)
				announce, dec.Reason = election.Layer2(in.Self, ip, nodes, sh.svc)
				if dec.Owner == "" && dec.Reason == election.NotOwner {
					dec.Reason = election.NoEligibleNode
				}
				if announce {
					d.Layer2 = append(d.Layer2, Layer2{IP: ip, Interfaces: pool.Interfaces})
				}
			} else {
				dec.Announcers = election.Announcers(nodes, sh.svc)
				announce = slices.Contains(dec.Announcers, in.Self)
				dec.Reason = election.Announcing
				if !announce {
					dec.Reason = election.NoEligibleNode
					for _, n := range nodes {
						if n.Name == in.Self {
							_, dec.Reason = election.Eligible(n, sh.svc)
						}
					}
				}
				if announce {
					for _, r := range advertise(ip, pool.Advertisements) {
						if _, dup := routes[r.Prefix]; !dup {
							routes[r.Prefix] = r
						}
					}
				}
			}
		}
		dec.Announce = announce
		if announce && pool.Forward {
			for _, svc := range sh.svcs {
				d.Forward = append(d.Forward, forwards(ip, svc, in)...)
			}
		}
		for _, k := range sh.keys {
			dec.Service = k
			d.Decisions = append(d.Decisions, dec)
		}
	}
	slices.SortFunc(d.Layer2, func(a, b Layer2) int { return a.IP.Compare(b.IP) })
	for _, r := range routes {
		d.BGPRoutes = append(d.BGPRoutes, r)
	}
	bgp.SortRoutes(d.BGPRoutes)
	slices.SortFunc(d.Forward, func(a, b Forward) int {
		return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	// Services sharing an address never share a port (the controller refuses that); if
	// they did, the first one would win.
	d.Forward = slices.CompactFunc(d.Forward, func(a, b Forward) bool {
		return a.VIP == b.VIP && a.Proto == b.Proto && a.Port == b.Port
	})
	slices.SortFunc(d.Decisions, func(a, b Decision) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), a.IP.Compare(b.IP))
	})
	return d
}

// forwards returns the virtual services for one address of svc: for Local, this node's
// endpoints at their target ports; for Cluster, every Ready node's NodePort, or when the
// Service has no NodePorts, all of its endpoints. Real servers are of the VIP's family.
func forwards(vip netip.Addr, svc *Service, in Input) []Forward {
	var out []Forward
	for _, p := range svc.Ports {
		f := Forward{
			VIP: vip, Port: p.Port, Proto: p.Proto, Scheduler: svc.Scheduler,
			Persistence: svc.Persistence, Masquerade: !svc.Local,
		}
		for _, r := range svc.SourceRanges {
			if r.Addr().Is4() == vip.Is4() {
				f.SourceRanges = append(f.SourceRanges, r)
			}
		}
		if !svc.Local && p.NodePort != 0 {
			for _, n := range in.Nodes {
				if !n.Ready {
					continue
				}
				for _, a := range n.Addresses {
					if a.Is4() == vip.Is4() {
						f.RealServers = append(f.RealServers, RealServer{Addr: a, Port: p.NodePort})
						break
					}
				}
			}
		} else {
			for _, e := range svc.Endpoints {
				port, ok := e.Ports[p.Name]
				if ok && e.Addr.Is4() == vip.Is4() && (!svc.Local || e.Node == in.Self) {
					f.RealServers = append(f.RealServers, RealServer{Addr: e.Addr, Port: port})
				}
			}
		}
		slices.SortFunc(f.RealServers, func(a, b RealServer) int {
			return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
		})
		f.RealServers = slices.Compact(f.RealServers)
		out = append(out, f)
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
