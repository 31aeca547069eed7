package plan

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/election"
)

func cfg(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`
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
		{Service: "ns/routed", IP: ip("198.51.100.1"), Pool: "routed", Protocol: config.BGP},
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
