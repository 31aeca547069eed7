package plan

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/heraldlb/herald/pkg/bfd"
	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/election"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/transport"
)

func cfg(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`
forwarding: none
peers:
- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501}
address-pools:
- {name: l2, protocol: layer2, addresses: [192.168.10.90-192.168.10.100, "fd10::/120"]}
- {name: pinned, protocol: layer2, interfaces: [eth1], addresses: [192.168.20.0/24]}
- {name: routed, protocol: bgp, addresses: [198.51.100.0/24]}
`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

var nodes = []Node{{Name: "n1", Ready: true}, {Name: "n2", Ready: true}, {Name: "n3", Ready: true}}

func TestExactlyOneNodeAnnounces(t *testing.T) {
	svcs := []Service{
		{Key: "ns/a", IPs: []netip.Addr{ip("192.168.10.90"), ip("fd10::1")}},
		{Key: "ns/b", IPs: []netip.Addr{ip("192.168.10.91")}},
		{Key: "ns/c", IPs: []netip.Addr{ip("192.168.20.5")}},
	}
	count := map[netip.Addr]int{}
	for _, self := range []string{"n1", "n2", "n3"} {
		d := Compute(Input{Config: cfg(t), Services: svcs, Nodes: nodes, Members: []string{"n1", "n2", "n3"}, UseMembers: true, Self: self})
		for _, l := range d.Layer2 {
			count[l.IP]++
			if l.IP == ip("192.168.20.5") && (len(l.Interfaces) != 1 || l.Interfaces[0] != "eth1") {
				t.Errorf("pinned pool interfaces %v", l.Interfaces)
			}
		}
		for _, dec := range d.Decisions {
			if dec.Announce != (dec.Owner == self) || dec.Pool == "" {
				t.Errorf("%s: decision %+v", self, dec)
			}
		}
	}
	for _, s := range svcs {
		for _, a := range s.IPs {
			if count[a] != 1 {
				t.Errorf("%s announced by %d nodes", a, count[a])
			}
		}
	}
}

func TestReasons(t *testing.T) {
	svcs := []Service{
		{Key: "ns/local", IPs: []netip.Addr{ip("192.168.10.92")}, Local: true, EndpointNodes: map[string]bool{"n2": true}},
		{Key: "ns/orphan", IPs: []netip.Addr{ip("192.168.10.93")}, Local: true},
		{Key: "ns/outside", IPs: []netip.Addr{ip("10.0.0.1")}},
		{Key: "ns/routed", IPs: []netip.Addr{ip("198.51.100.1")}},
	}
	d := Compute(Input{Config: cfg(t), Services: svcs, Nodes: nodes, Members: []string{"n1", "n2"}, UseMembers: true, Self: "n1"})
	want := []Decision{
		{Service: "ns/local", IP: ip("192.168.10.92"), Pool: "l2", Protocol: config.Layer2, Owner: "n2", Reason: election.NoLocalEndpoint},
		{Service: "ns/orphan", IP: ip("192.168.10.93"), Pool: "l2", Protocol: config.Layer2, Reason: election.NoLocalEndpoint},
		{Service: "ns/outside", IP: ip("10.0.0.1")},
		{Service: "ns/routed", IP: ip("198.51.100.1"), Pool: "routed", Protocol: config.BGP, Announcers: []string{"n1", "n2"}, Announce: true, Reason: election.Announcing},
	}
	if diff := cmp.Diff(want, d.Decisions, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	if len(d.Layer2) != 0 {
		t.Errorf("n1 announces %v", d.Layer2)
	}
	// n3's speaker is down: it is never the owner, and says so.
	d = Compute(Input{Config: cfg(t), Services: svcs[:1], Nodes: nodes, Members: []string{"n1", "n2"}, UseMembers: true, Self: "n3"})
	if d.Decisions[0].Reason != election.SpeakerDown {
		t.Errorf("n3: %v", d.Decisions[0].Reason)
	}
	// Without memberlist, Ready stands in for a live speaker.
	d = Compute(Input{Config: cfg(t), Services: svcs[:1], Nodes: nodes, Self: "n2"})
	if !d.Decisions[0].Announce {
		t.Errorf("n2 without memberlist: %+v", d.Decisions[0])
	}
}

func TestSharedAddressElectedOnce(t *testing.T) {
	svcs := []Service{
		{Key: "ns/dns-tcp", IPs: []netip.Addr{ip("192.168.10.95")}},
		{Key: "ns/dns-udp", IPs: []netip.Addr{ip("192.168.10.95")}},
	}
	for _, self := range []string{"n1", "n2", "n3"} {
		d := Compute(Input{Config: cfg(t), Services: svcs, Nodes: nodes, Members: []string{"n1", "n2", "n3"}, UseMembers: true, Self: self})
		if len(d.Decisions) != 2 || d.Decisions[0].Owner != d.Decisions[1].Owner {
			t.Fatalf("%s: %+v", self, d.Decisions)
		}
		if (len(d.Layer2) == 1) != (d.Decisions[0].Owner == self) {
			t.Errorf("%s: layer2 %v with owner %s", self, d.Layer2, d.Decisions[0].Owner)
		}
	}
}

func TestBGP(t *testing.T) {
	c, err := config.Parse([]byte(`
forwarding: none
peers:
- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501, password: s3cret}
- peer-address: 10.0.0.2
  peer-asn: 64500
  my-asn: 64501
  node-selectors: [{match-labels: {rack: r2}}]
bgp-communities: {no-export: "65535:65281"}
address-pools:
- name: routed
  protocol: bgp
  addresses: [198.51.100.0/24, "fd00:1::/120"]
  bgp-advertisements:
  - {localpref: 100, communities: [no-export, "64512:7"], large-communities: ["64512:1:2"]}
  - {aggregation-length: 24, aggregation-length-v6: 120}
`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []Node{{Name: "n1", Ready: true, Labels: map[string]string{"rack": "r1"}}, {Name: "n2", Ready: true, Labels: map[string]string{"rack": "r2"}}, {Name: "n3", Ready: true}}
	svcs := []Service{
		{Key: "ns/a", IPs: []netip.Addr{ip("198.51.100.5"), ip("fd00:1::5")}},
		{Key: "ns/b", IPs: []netip.Addr{ip("198.51.100.6")}},
		{Key: "ns/local", IPs: []netip.Addr{ip("198.51.100.7")}, Local: true, EndpointNodes: map[string]bool{"n2": true}},
	}
	in := Input{Config: c, Services: svcs, Nodes: nodes, Members: []string{"n1", "n2", "n3"}, UseMembers: true}

	in.Self = "n1"
	d := Compute(in)
	if len(d.BGPPeers) != 1 || d.BGPPeers[0].Address != ip("10.0.0.1") || d.BGPPeers[0].Password != "s3cret" || d.BGPPeers[0].MyASN != 64501 {
		t.Errorf("n1 peers %+v, want only 10.0.0.1 (the other selects rack r2)", d.BGPPeers)
	}
	var prefixes []string
	for _, r := range d.BGPRoutes {
		prefixes = append(prefixes, r.Prefix.String())
	}
	// Host routes for a and b (not the Local service: no endpoint on n1), and the
	// aggregate, once each; nothing of IPv6, which no peer of n1's carries.
	want := []string{"198.51.100.0/24", "198.51.100.5/32", "198.51.100.6/32"}
	if diff := cmp.Diff(want, prefixes); diff != "" {
		t.Errorf("n1 routes (-want +got):\n%s", diff)
	}
	host := d.BGPRoutes[1]
	if host.LocalPref != 100 || !slices.Equal(host.Communities, []uint32{64512<<16 | 7, 65535<<16 | 65281}) || len(host.LargeCommunities) != 1 {
		t.Errorf("host route attributes %+v", host)
	}
	for _, dec := range d.Decisions {
		if dec.Service == "ns/a" && dec.IP.Is4() && !slices.Equal(dec.Announcers, []string{"n1", "n2", "n3"}) {
			t.Errorf("every eligible node announces a Cluster Service: %v", dec.Announcers)
		}
		if dec.Service == "ns/a" && dec.IP.Is6() && (dec.Announce || len(dec.Announcers) > 0 || dec.Reason != election.NotSelected) {
			t.Errorf("an IPv6 address with no IPv6 peer is announced: %+v", dec)
		}
		if dec.Service == "ns/local" && (dec.Announce || dec.Reason != election.NoLocalEndpoint || !slices.Equal(dec.Announcers, []string{"n2"})) {
			t.Errorf("Local Service on n1: %+v", dec)
		}
	}

	in.Self = "n2"
	d = Compute(in)
	if len(d.BGPPeers) != 2 {
		t.Errorf("n2 (rack r2) peers with %d routers, want 2", len(d.BGPPeers))
	}
	if !slices.ContainsFunc(d.BGPRoutes, func(r bgp.Route) bool { return r.Prefix.String() == "198.51.100.7/32" }) {
		t.Errorf("n2 holds the Local Service's endpoint but does not advertise it: %v", d.BGPRoutes)
	}
}

// A node that no peer selects has no session to advertise on: it is not counted as
// announcing, and says why.
func TestBGPNodeNoPeerSelects(t *testing.T) {
	c, err := config.Parse([]byte(`
forwarding: none
peers:
- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501, node-selectors: [{match-labels: {bgp: "yes"}}]}
address-pools:
- {name: routed, protocol: bgp, addresses: [198.51.100.0/24]}
`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []Node{{Name: "n1", Ready: true, Labels: map[string]string{"bgp": "yes"}}, {Name: "n2", Ready: true}}
	in := Input{Config: c, Services: []Service{{Key: "ns/a", IPs: []netip.Addr{ip("198.51.100.5")}}}, Nodes: nodes,
		Members: []string{"n1", "n2"}, UseMembers: true}
	for _, tt := range []struct {
		self     string
		announce bool
		reason   election.Reason
	}{{"n1", true, election.Announcing}, {"n2", false, election.NotSelected}} {
		in.Self = tt.self
		d := Compute(in)
		dec := d.Decisions[0]
		if dec.Announce != tt.announce || dec.Reason != tt.reason || !slices.Equal(dec.Announcers, []string{"n1"}) {
			t.Errorf("%s: %+v, want announce %v (%s) with announcers [n1]", tt.self, dec, tt.announce, tt.reason)
		}
		if (len(d.BGPRoutes) > 0) != tt.announce {
			t.Errorf("%s routes %v", tt.self, d.BGPRoutes)
		}
	}
}

func TestForward(t *testing.T) {
	c, err := config.Parse([]byte(`
peers:
- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501}
address-pools:
- {name: fwd, protocol: layer2, addresses: [192.168.10.0/24, "fd10::/120"]}
- {name: routed, protocol: bgp, addresses: [198.51.100.0/24]}
- {name: plain, protocol: layer2, forwarding: none, addresses: [192.168.30.0/24]}
`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []Node{
		{Name: "n1", Ready: true, Addresses: []netip.Addr{ip("10.0.0.1"), ip("fd00::1")}},
		{Name: "n2", Ready: true, Addresses: []netip.Addr{ip("10.0.0.2"), ip("fd00::2")}},
		{Name: "n3", Addresses: []netip.Addr{ip("10.0.0.3")}}, // NotReady: no real server
	}
	eps := []Endpoint{
		{Addr: ip("10.244.1.5"), Node: "n1", Ports: map[string]uint16{"http": 8080}},
		{Addr: ip("10.244.2.5"), Node: "n2", Ports: map[string]uint16{"http": 8080}},
		{Addr: ip("fd44::5"), Node: "n1", Ports: map[string]uint16{"http": 8080}},
	}
	http := Port{Name: "http", Proto: transport.TCP, Port: 80, NodePort: 30080}
	svcs := []Service{
		{Key: "ns/cluster", IPs: []netip.Addr{ip("192.168.10.1"), ip("fd10::1")}, Ports: []Port{http, {Name: "dns", Proto: transport.UDP, Port: 53, NodePort: 30053}},
			Endpoints: eps, Scheduler: "wrr", Persistence: 3 * time.Hour, SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("fd99::/64")}},
		{Key: "ns/local", IPs: []netip.Addr{ip("198.51.100.2")}, Local: true, Ports: []Port{http}, Endpoints: eps,
			EndpointNodes: map[string]bool{"n1": true, "n2": true}},
		{Key: "ns/direct", IPs: []netip.Addr{ip("198.51.100.3")}, Ports: []Port{{Name: "http", Proto: transport.TCP, Port: 80}}, Endpoints: eps},
		{Key: "ns/plain", IPs: []netip.Addr{ip("192.168.30.1")}, Ports: []Port{http}},
	}
	// n1 is the only node that can forward, so it owns every address of the pools that
	// forward, whatever the hash says.
	in := Input{Config: c, Services: svcs, Nodes: nodes, Self: "n1", Forwarders: map[string]bool{"n1": true}}
	d := Compute(in)
	v4range := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}
	v6range := []netip.Prefix{netip.MustParsePrefix("fd99::/64")}
	want := []forward.Service{
		{VIP: ip("192.168.10.1"), Port: 80, Proto: transport.TCP, Scheduler: "wrr", Persistence: 3 * time.Hour, SourceRanges: v4range, Masquerade: true, RealServers: rs("10.0.0.2:30080", "10.244.1.5:8080")}, // n1's own pod, not its own NodePort
		{VIP: ip("192.168.10.1"), Port: 53, Proto: transport.UDP, Scheduler: "wrr", Persistence: 3 * time.Hour, SourceRanges: v4range, Masquerade: true, RealServers: rs("10.0.0.2:30053")},
		{VIP: ip("198.51.100.2"), Port: 80, Proto: transport.TCP, RealServers: rs("10.244.1.5:8080")},
		{VIP: ip("198.51.100.3"), Port: 80, Proto: transport.TCP, Masquerade: true, RealServers: rs("10.244.1.5:8080", "10.244.2.5:8080")},
		{VIP: ip("fd10::1"), Port: 80, Proto: transport.TCP, Scheduler: "wrr", Persistence: 3 * time.Hour, SourceRanges: v6range, Masquerade: true, RealServers: rs("[fd00::2]:30080", "[fd44::5]:8080")},
		{VIP: ip("fd10::1"), Port: 53, Proto: transport.UDP, Scheduler: "wrr", Persistence: 3 * time.Hour, SourceRanges: v6range, Masquerade: true, RealServers: rs("[fd00::2]:30053")},
	}
	if diff := cmp.Diff(want, d.Forward, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})); diff != "" {
		t.Errorf("n1 forwards (-want +got):\n%s", diff)
	}

	// n2 cannot forward: it announces nothing from pools that forward, and says why.
	in.Self = "n2"
	d = Compute(in)
	if len(d.Forward) != 0 {
		t.Errorf("n2 without IPVS forwards %v", d.Forward)
	}
	for _, dec := range d.Decisions {
		if dec.Pool != "plain" && (dec.Announce || dec.Reason != election.CannotForward) {
			t.Errorf("n2 without IPVS: %+v", dec)
		}
	}

	// No node can forward: nothing from those pools is announced anywhere.
	in.Forwarders = nil
	for _, self := range []string{"n1", "n2"} {
		in.Self = self
		for _, dec := range Compute(in).Decisions {
			if dec.Pool != "plain" && dec.Announce {
				t.Errorf("%s announces %s without IPVS", self, dec.IP)
			}
		}
	}
}

// A peer naming a BFD profile gets a BFD session with its parameters (multi-hop for an
// ebgp-multihop peer) and its own router ID; one naming none gets neither.
func TestPeerBFDAndRouterID(t *testing.T) {
	c, err := config.Parse([]byte(`
peers:
- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501, bfd-profile: fast, router-id: 10.9.9.9}
- {peer-address: 10.0.1.1, peer-asn: 64500, my-asn: 64501, bfd-profile: far, ebgp-multihop: true}
- {peer-address: 10.0.0.2, peer-asn: 64500, my-asn: 64501}
bfd-profiles:
- {name: fast, receive-interval: 100, transmit-interval: 50, detect-multiplier: 4, passive-mode: true}
- {name: far, minimum-ttl: 250}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := Compute(Input{Config: c, Self: "n1", Nodes: []Node{{Name: "n1", Ready: true}}})
	want := []bfd.Config{
		{DesiredMinTx: 50 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond, DetectMult: 4, Passive: true, MinTTL: 255},
		{DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond, DetectMult: 3, Multihop: true, MinTTL: 250},
		{},
	}
	if len(d.BGPPeers) != 3 {
		t.Fatalf("peers %+v", d.BGPPeers)
	}
	for i, p := range d.BGPPeers {
		if p.BFD != want[i] {
			t.Errorf("peer %s: BFD %+v, want %+v", p.Address, p.BFD, want[i])
		}
	}
	if d.BGPPeers[0].RouterID != ip("10.9.9.9") || d.BGPPeers[1].RouterID.IsValid() {
		t.Errorf("router IDs %v and %v", d.BGPPeers[0].RouterID, d.BGPPeers[1].RouterID)
	}
}

// The failure detector drives the data path: a node whose speaker went silent leaves
// every virtual service at once, its NodePort and every endpoint on it, in every mode.
func TestRealServers(t *testing.T) {
	nodes := []Node{
		{Name: "n1", Ready: true, Addresses: []netip.Addr{ip("10.0.0.1"), ip("fd00::1")}},
		{Name: "n2", Ready: true, Addresses: []netip.Addr{ip("10.0.0.2"), ip("fd00::2")}},
		{Name: "n3", Ready: true, Addresses: []netip.Addr{ip("10.0.0.3")}},
		{Name: "n4", Addresses: []netip.Addr{ip("10.0.0.4")}}, // NotReady
	}
	eps := []Endpoint{
		{Addr: ip("10.244.1.5"), Node: "n1", Ports: map[string]uint16{"http": 8080}},
		{Addr: ip("10.244.2.5"), Node: "n2", Ports: map[string]uint16{"http": 8080}},
		{Addr: ip("10.244.2.6"), Node: "n2", Ports: map[string]uint16{"http": 8080}},
		{Addr: ip("10.244.3.5"), Node: "n3", Ports: map[string]uint16{"http": 8081}},
		{Addr: ip("10.244.3.9"), Node: "n3", Ports: map[string]uint16{"metrics": 9090}}, // another port only
		{Addr: ip("fd44::5"), Node: "n1", Ports: map[string]uint16{"http": 8080}},
	}
	http := Port{Name: "http", Proto: transport.TCP, Port: 80, NodePort: 30080}
	direct := Port{Name: "http", Proto: transport.TCP, Port: 80} // no NodePort
	silent := func(names ...string) map[string]bool {
		out := map[string]bool{}
		for _, n := range names {
			out[n] = true
		}
		return out
	}
	for _, tt := range []struct {
		name        string
		vip         string
		local       bool
		port        Port
		toEndpoints bool
		silent      map[string]bool
		want        []forward.RealServer
	}{
		{"nodeports: every Ready node; this node by its own pods, not its own NodePort", "192.168.10.1", false, http, false, nil,
			rs("10.0.0.1:30080", "10.0.0.3:30080", "10.244.2.5:8080", "10.244.2.6:8080")},
		{"nodeports: a silent node leaves", "192.168.10.1", false, http, false, silent("n2"),
			rs("10.0.0.1:30080", "10.0.0.3:30080")},
		{"nodeports: IPv6, a silent node leaves (this node has no IPv6 pod)", "fd10::1", false, http, false, silent("n1"), nil},
		{"nodeports: IPv6", "fd10::1", false, http, false, nil, rs("[fd00::1]:30080")},
		{"nodeports: every node silent", "192.168.10.1", false, http, false, silent("n1", "n2", "n3"), nil},
		{"nodeports: a silent name that is no node changes nothing", "192.168.10.1", false, http, false, silent("n9"),
			rs("10.0.0.1:30080", "10.0.0.3:30080", "10.244.2.5:8080", "10.244.2.6:8080")},
		{"endpoints: every ready endpoint, at its target port", "192.168.10.1", false, http, true, nil,
			rs("10.244.1.5:8080", "10.244.2.5:8080", "10.244.2.6:8080", "10.244.3.5:8081")},
		{"endpoints: none on a silent node", "192.168.10.1", false, http, true, silent("n2"),
			rs("10.244.1.5:8080", "10.244.3.5:8081")},
		{"endpoints: IPv6", "fd10::1", false, http, true, nil, rs("[fd44::5]:8080")},
		{"endpoints: the only ones are on silent nodes", "fd10::1", false, http, true, silent("n1"), nil},
		{"no NodePort: endpoints, none on a silent node", "192.168.10.1", false, direct, false, silent("n3"),
			rs("10.244.1.5:8080", "10.244.2.5:8080", "10.244.2.6:8080")},
		{"local: this node's endpoints", "192.168.10.1", true, http, false, nil, rs("10.244.2.5:8080", "10.244.2.6:8080")},
		{"local, endpoints pool: this node's endpoints", "192.168.10.1", true, http, true, silent("n1"), rs("10.244.2.5:8080", "10.244.2.6:8080")},
		{"a port no endpoint has", "192.168.10.1", false, Port{Name: "grpc", Proto: transport.TCP, Port: 81}, true, nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			svc := &Service{Key: "ns/s", Local: tt.local, Ports: []Port{tt.port}, Endpoints: eps}
			in := Input{Nodes: nodes, Silent: tt.silent, Self: "n2"}
			got := RealServers(ip(tt.vip), svc, tt.port, in, tt.toEndpoints)
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("real servers (-want +got):\n%s", diff)
			}
		})
	}
}

// forwarding: endpoints sends the traffic straight to the endpoints, with everything
// else as for ipvs; a Service with nowhere to go is refused, and says so; a node that
// cannot forward never wins the pool.
func TestForwardEndpoints(t *testing.T) {
	c, err := config.Parse([]byte(`
forwarding: endpoints
peers:
- {peer-address: 10.0.0.254, peer-asn: 64500, my-asn: 64501}
address-pools:
- {name: direct, protocol: layer2, addresses: [192.168.10.0/24]}
- {name: routed, protocol: bgp, addresses: [198.51.100.0/24]}
- {name: nodeports, protocol: layer2, forwarding: ipvs, addresses: [192.168.20.0/24]}
`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []Node{
		{Name: "n1", Ready: true, Addresses: []netip.Addr{ip("10.0.0.1")}},
		{Name: "n2", Ready: true, Addresses: []netip.Addr{ip("10.0.0.2")}},
		{Name: "n3", Ready: true, Addresses: []netip.Addr{ip("10.0.0.3")}},
	}
	eps := []Endpoint{
		{Addr: ip("10.244.1.5"), Node: "n1", Ports: map[string]uint16{"http": 8080}},
		{Addr: ip("10.244.3.5"), Node: "n3", Ports: map[string]uint16{"http": 8080}},
	}
	http := Port{Name: "http", Proto: transport.TCP, Port: 80, NodePort: 30080}
	svcs := []Service{
		{Key: "ns/cluster", IPs: []netip.Addr{ip("192.168.10.1")}, Ports: []Port{http}, Endpoints: eps,
			EndpointNodes: map[string]bool{"n1": true, "n3": true}, Scheduler: "lc", Persistence: time.Hour,
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}},
		{Key: "ns/local", IPs: []netip.Addr{ip("198.51.100.2")}, Local: true, Ports: []Port{http}, Endpoints: eps,
			EndpointNodes: map[string]bool{"n1": true, "n3": true}},
		{Key: "ns/empty", IPs: []netip.Addr{ip("192.168.10.2")}, Ports: []Port{http}},
		{Key: "ns/nodeports", IPs: []netip.Addr{ip("192.168.20.1")}, Ports: []Port{http}, Endpoints: eps},
	}
	// n1 is the only forwarder: it owns every address of the pools that forward.
	in := Input{Config: c, Services: svcs, Nodes: nodes, Members: []string{"n1", "n2", "n3"}, UseMembers: true,
		Self: "n1", Forwarders: map[string]bool{"n1": true}}
	opts := cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})
	want := []forward.Service{
		{VIP: ip("192.168.10.1"), Port: 80, Proto: transport.TCP, Scheduler: "lc", Persistence: time.Hour,
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, Masquerade: true, RealServers: rs("10.244.1.5:8080", "10.244.3.5:8080")},
		{VIP: ip("192.168.10.2"), Port: 80, Proto: transport.TCP, Masquerade: true},
		{VIP: ip("192.168.20.1"), Port: 80, Proto: transport.TCP, Masquerade: true, RealServers: rs("10.0.0.2:30080", "10.0.0.3:30080", "10.244.1.5:8080")},
		{VIP: ip("198.51.100.2"), Port: 80, Proto: transport.TCP, RealServers: rs("10.244.1.5:8080")},
	}
	d := Compute(in)
	if diff := cmp.Diff(want, d.Forward, opts); diff != "" {
		t.Errorf("n1 forwards (-want +got):\n%s", diff)
	}
	refused := map[string]bool{}
	for _, dec := range d.Decisions {
		if !dec.Announce {
			t.Errorf("n1, the only forwarder, does not announce: %+v", dec)
		}
		refused[dec.Service] = dec.Refused
	}
	if diff := cmp.Diff(map[string]bool{"ns/cluster": false, "ns/local": false, "ns/empty": true, "ns/nodeports": false}, refused); diff != "" {
		t.Errorf("refused (-want +got):\n%s", diff)
	}

	// n3 goes silent: its endpoint and NodePort leave at once, though its Node is Ready.
	in.Members, in.Silent = []string{"n1", "n2"}, map[string]bool{"n3": true}
	d = Compute(in)
	want[0].RealServers = rs("10.244.1.5:8080")
	want[2].RealServers = rs("10.0.0.2:30080", "10.244.1.5:8080")
	if diff := cmp.Diff(want, d.Forward, opts); diff != "" {
		t.Errorf("n1 forwards with n3 silent (-want +got):\n%s", diff)
	}
	// n1's endpoint goes too (it is not ready any more): the cluster Service is refused.
	in.Services[0].Endpoints = eps[1:]
	d = Compute(in)
	if d.Forward[0].VIP != ip("192.168.10.1") || len(d.Forward[0].RealServers) != 0 {
		t.Errorf("cluster Service with its only endpoint on a silent node: %+v", d.Forward[0])
	}
	if i := slices.IndexFunc(d.Decisions, func(dec Decision) bool { return dec.Service == "ns/cluster" }); !d.Decisions[i].Refused {
		t.Errorf("not refused: %+v", d.Decisions[i])
	}

	// A Local Service with no ready endpoint on a node that could take it: a node
	// announces it and refuses its traffic, rather than nobody answering.
	in.Services = []Service{{Key: "ns/lonely", IPs: []netip.Addr{ip("192.168.10.3")}, Local: true, Ports: []Port{http},
		Endpoints: eps[1:], EndpointNodes: map[string]bool{"n3": true}}}
	d = Compute(in)
	if len(d.Decisions) != 1 || !d.Decisions[0].Announce || !d.Decisions[0].Refused || len(d.Forward) != 1 || len(d.Forward[0].RealServers) != 0 || d.Forward[0].Masquerade {
		t.Errorf("Local Service without a live endpoint: %+v, forwarding %+v", d.Decisions, d.Forward)
	}
	// Once a node that can forward has an endpoint, it is that node's again.
	in.Services[0].Endpoints, in.Services[0].EndpointNodes = eps[:1], map[string]bool{"n1": true}
	d = Compute(in)
	if !d.Decisions[0].Announce || d.Decisions[0].Refused || len(d.Forward[0].RealServers) != 1 {
		t.Errorf("Local Service with an endpoint on n1: %+v, forwarding %+v", d.Decisions, d.Forward)
	}
	in.Services = svcs

	// Nodes that cannot forward never win a pool that forwards to endpoints.
	for _, self := range []string{"n2", "n3"} {
		in.Self = self
		d = Compute(in)
		if len(d.Forward) != 0 {
			t.Errorf("%s without IPVS forwards %v", self, d.Forward)
		}
		for _, dec := range d.Decisions {
			if dec.Announce || dec.Refused || (dec.Reason != election.CannotForward && dec.Reason != election.SpeakerDown) {
				t.Errorf("%s without IPVS: %+v", self, dec)
			}
		}
	}
}

// rs builds real servers from "addr:port" strings.
func rs(addrPorts ...string) []forward.RealServer {
	var out []forward.RealServer
	for _, s := range addrPorts {
		ap := netip.MustParseAddrPort(s)
		out = append(out, forward.RealServer{Addr: ap.Addr(), Port: ap.Port()})
	}
	return out
}

func TestRelayLocal(t *testing.T) {
	c, err := config.Parse([]byte(`
forwarding: none
relay-local: true
address-pools:
- {name: l2, protocol: layer2, addresses: [192.168.10.0/24, "fd10::/120"]}
- {name: off, protocol: layer2, relay-local: false, addresses: [192.168.30.0/24]}
- {name: fwd, protocol: layer2, forwarding: ipvs, addresses: [192.168.40.0/24]}
`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []Node{
		{Name: "n1", Ready: true, Addresses: []netip.Addr{ip("10.0.0.1")}},
		{Name: "n2", Ready: true, Addresses: []netip.Addr{ip("10.0.0.2")}},
		{Name: "n3", Ready: true, Addresses: []netip.Addr{ip("10.0.0.3")}},
		{Name: "n4", Ready: true, Addresses: []netip.Addr{ip("10.0.0.4")}, Excluded: true},
		{Name: "n5", Addresses: []netip.Addr{ip("10.0.0.5")}}, // NotReady
	}
	every := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": true}
	ports := []Port{{Name: "http", Proto: transport.TCP, Port: 80}, {Name: "dns", Proto: transport.UDP, Port: 53}, {Name: "sctp", Proto: transport.SCTP, Port: 9}}
	all := map[string]uint16{"http": 8080, "dns": 5353, "sctp": 9}
	local := func(key, addr string) Service {
		s := Service{Key: key, IPs: []netip.Addr{ip(addr)}, Local: true, Ports: ports, EndpointNodes: every}
		for i, n := range []string{"n1", "n2", "n3", "n4", "n5"} {
			s.Endpoints = append(s.Endpoints, Endpoint{Addr: ip(fmt.Sprintf("10.244.%d.5", i+1)), Node: n, Ports: all})
		}
		return s
	}
	base := Input{Config: c, Nodes: nodes, Members: []string{"n1", "n2", "n3", "n4", "n5"}, UseMembers: true}
	// owner computes the plan of the node that announces the Service's address.
	owner := func(in Input) (string, Desired) {
		for _, self := range []string{"n1", "n2", "n3"} {
			in.Self = self
			if d := Compute(in); len(d.Layer2) > 0 {
				return self, d
			}
		}
		t.Fatal("nobody announces")
		return "", Desired{}
	}
	via := func(d Desired) map[string]bool {
		out := map[string]bool{}
		for _, r := range d.Relay {
			out[r.Node] = true
			if r.Via != ip("10.0.0."+r.Node[1:]) {
				t.Errorf("route %+v: via %s", r, r.Via)
			}
		}
		return out
	}
	protos := func(d Desired) map[transport.Protocol]bool {
		out := map[transport.Protocol]bool{}
		for _, r := range d.Relay {
			out[r.Proto] = true
		}
		return out
	}

	in := base
	in.Services = []Service{local("ns/a", "192.168.10.1")}
	self, d := owner(in)
	got := via(d)
	if len(got) != 2 || got[self] || got["n4"] || got["n5"] {
		t.Errorf("owner %s relays to %v; want the two other Ready, not excluded nodes", self, got)
	}
	if p := protos(d); !p[transport.TCP] || !p[transport.UDP] || p[transport.SCTP] {
		t.Errorf("relayed protocols %v, want TCP and UDP", p)
	}
	// Only the owner relays.
	for _, other := range []string{"n1", "n2", "n3"} {
		if in.Self = other; other != self {
			if d := Compute(in); len(d.Relay) != 0 {
				t.Errorf("%s, not the owner, relays %v", other, d.Relay)
			}
		}
	}

	// A node found silent, or without an endpoint, or a dead speaker, takes no share.
	for name, mod := range map[string]func(in *Input, other string){
		"silent": func(in *Input, other string) { in.Silent = map[string]bool{other: true} },
		"no endpoint": func(in *Input, other string) {
			in.Services[0].EndpointNodes = map[string]bool{"n1": true, "n2": true, "n3": true, other: false}
			in.Services[0].Endpoints = slices.DeleteFunc(in.Services[0].Endpoints, func(e Endpoint) bool { return e.Node == other })
		},
		"speaker down": func(in *Input, other string) {
			in.Members = slices.DeleteFunc(slices.Clone(in.Members), func(m string) bool { return m == other })
		},
		// A node claiming the Service's address as its own: relayed to, the flows
		// would come straight back.
		"address is the Service's": func(in *Input, other string) {
			in.Nodes = slices.Clone(in.Nodes)
			for i := range in.Nodes {
				if in.Nodes[i].Name == other {
					in.Nodes[i].Addresses = []netip.Addr{ip("192.168.10.1")}
				}
			}
		},
	} {
		other := "n1"
		for _, n := range []string{"n1", "n2", "n3"} {
			if n != self {
				other = n
				break
			}
		}
		in := base
		in.Services = []Service{local("ns/a", "192.168.10.1")}
		mod(&in, other)
		in.Self = self
		if got := via(Compute(in)); got[other] || len(got) != 1 {
			t.Errorf("%s %s: relays to %v", name, other, got)
		}
	}

	// A node whose only pod is terminating but still serving keeps its share (kube-proxy
	// there falls back to it, so the flows it holds drain), though it may no longer
	// announce; such a pod is never an IPVS real server.
	{
		other := "n1"
		if self == "n1" {
			other = "n2"
		}
		in := base
		in.Services = []Service{local("ns/a", "192.168.10.1")}
		in.Services[0].EndpointNodes = map[string]bool{"n1": true, "n2": true, "n3": true, other: false}
		for i, e := range in.Services[0].Endpoints {
			if e.Node == other {
				in.Services[0].Endpoints[i].Terminating = true
			}
		}
		in.Self = self
		if got := via(Compute(in)); !got[other] || len(got) != 2 {
			t.Errorf("%s's pod terminating, still serving: relays to %v, want it kept among two", other, got)
		}
		in.Self = other
		if d := Compute(in); len(d.Layer2) != 0 {
			t.Errorf("%s announces with only a terminating pod: %v", other, d.Layer2)
		}
		svc := in.Services[0]
		for _, p := range ports {
			if rs := localEndpoints(ip("192.168.10.1"), &svc, p, other); len(rs) != 0 {
				t.Errorf("%s's terminating pod as a real server of %s: %v", other, p.Name, rs)
			}
		}
	}

	// A node whose pod lacks a port, or has an address of the other family only, gets
	// no share of that port: kube-proxy there would drop it.
	in = base
	in.Services = []Service{local("ns/a", "192.168.10.1")}
	for i, e := range in.Services[0].Endpoints {
		if e.Node != self {
			in.Services[0].Endpoints[i].Ports = map[string]uint16{"http": 8080}
			break
		}
	}
	in.Self = self
	d = Compute(in)
	byProto := map[transport.Protocol]map[string]bool{}
	for _, r := range d.Relay {
		if byProto[r.Proto] == nil {
			byProto[r.Proto] = map[string]bool{}
		}
		byProto[r.Proto][r.Node] = true
	}
	if len(byProto[transport.TCP]) != 2 || len(byProto[transport.UDP]) != 1 {
		t.Errorf("one node's pod without the dns port: TCP relayed to %v, UDP to %v", byProto[transport.TCP], byProto[transport.UDP])
	}

	// No relay: session affinity, Cluster, a pool without relay-local, a pool that
	// forwards, an IPv6 address while the nodes have IPv4 addresses only.
	for name, svc := range map[string]Service{
		"ClientIP affinity": func() Service { s := local("ns/b", "192.168.10.2"); s.Persistence = time.Hour; return s }(),
		"Cluster":           func() Service { s := local("ns/b", "192.168.10.2"); s.Local = false; return s }(),
		"relay-local false": local("ns/b", "192.168.30.2"),
		"forwarding ipvs":   local("ns/b", "192.168.40.2"),
		"no IPv6 address":   local("ns/b", "fd10::2"),
	} {
		in := base
		in.Forwarders = map[string]bool{"n1": true, "n2": true, "n3": true}
		in.Services = []Service{svc}
		if _, d := owner(in); len(d.Relay) != 0 {
			t.Errorf("%s: relays %v", name, d.Relay)
		}
	}
}
