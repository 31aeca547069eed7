package relay

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/heraldlb/herald/pkg/transport"
)

var (
	vip   = netip.MustParseAddr("192.168.10.90")
	three = map[string]netip.Addr{
		"node1": netip.MustParseAddr("10.0.0.1"),
		"node2": netip.MustParseAddr("10.0.0.2"),
		"node3": netip.MustParseAddr("10.0.0.3"),
	}
)

// owners returns which node takes each source port's flows under rs, self for the rest.
func owners(rs []Route, self string) func(port uint16) string {
	return func(port uint16) string { return NodeOf(rs, port, self) }
}

func TestBucketsCoverEverySplittablePortOnce(t *testing.T) {
	next := uint16(FirstPort)
	for b := range Buckets {
		from, to := BucketPorts(b)
		if from != next || to < from {
			t.Fatalf("bucket %d: %d-%d, want it to start at %d", b, from, to, next)
		}
		next = to + 1
	}
	if next != LastPort+1 {
		t.Fatalf("buckets end at %d, want %d", next-1, LastPort)
	}
}

func TestBucketIsBucketPortsInverse(t *testing.T) {
	for port := range 1 << 16 {
		b := Bucket(uint16(port))
		if port < FirstPort || port > LastPort {
			if b != -1 {
				t.Errorf("port %d: bucket %d, want -1 (never split)", port, b)
			}
			continue
		}
		if from, to := BucketPorts(b); b < 0 || b >= Buckets || uint16(port) < from || uint16(port) > to {
			t.Fatalf("port %d: bucket %d (%d-%d)", port, b, from, to)
		}
	}
}

func TestSplit(t *testing.T) {
	rs := Split(vip, transport.TCP, 80, "node1", three)
	if len(rs) == 0 {
		t.Fatal("no routes: node1 keeps every flow")
	}
	for i, r := range rs {
		if r.Node == "node1" || r.Via != three[r.Node] || r.VIP != vip || r.Port != 80 || r.Proto != transport.TCP {
			t.Errorf("route %+v", r)
		}
		if i > 0 && (rs[i-1].To >= r.From || (rs[i-1].To+1 == r.From && rs[i-1].Node == r.Node)) {
			t.Errorf("routes %+v and %+v overlap or should have merged", rs[i-1], r)
		}
	}
	if len(rs) > Buckets {
		t.Errorf("%d routes for %d buckets", len(rs), Buckets)
	}
	// Every node takes a share of the ports clients really use.
	of := owners(rs, "node1")
	seen := map[string]int{}
	for p := 32768; p <= 60999; p += 64 {
		seen[of(uint16(p))]++
	}
	if len(seen) != 3 {
		t.Errorf("ephemeral ports go to %v, want all three nodes", seen)
	}
	// Ports 0 and 65535 cannot be split: they stay with the owner.
	if of(0) != "node1" || of(65535) != "node1" {
		t.Errorf("ports 0 and 65535 go to %s and %s", of(0), of(65535))
	}
}

func TestSplitAgreesWhoeverComputesIt(t *testing.T) {
	// Another owner computes the same bucket to node table: only its own buckets differ
	// (kept, not routed).
	a, b := owners(Split(vip, transport.TCP, 80, "node1", three), "node1"), owners(Split(vip, transport.TCP, 80, "node2", three), "node2")
	for p := FirstPort; p <= LastPort; p += 97 {
		if a(uint16(p)) != b(uint16(p)) {
			t.Fatalf("port %d: node1's split sends it to %s, node2's to %s", p, a(uint16(p)), b(uint16(p)))
		}
	}
}

func TestSplitMovesOnlyTheLeaversFlows(t *testing.T) {
	four := map[string]netip.Addr{"node4": netip.MustParseAddr("10.0.0.4")}
	for n, a := range three {
		four[n] = a
	}
	before, after := owners(Split(vip, transport.UDP, 53, "node1", four), "node1"), owners(Split(vip, transport.UDP, 53, "node1", three), "node1")
	moved := 0
	for b := range Buckets {
		p, _ := BucketPorts(b)
		if before(p) != after(p) {
			moved++
			if before(p) != "node4" {
				t.Errorf("bucket %d moved from %s to %s, though only node4 left", b, before(p), after(p))
			}
		}
	}
	if moved == 0 {
		t.Error("node4 held no bucket of four nodes' split")
	}
}

func TestSplitNothingToSpread(t *testing.T) {
	if rs := Split(vip, transport.TCP, 80, "node1", map[string]netip.Addr{"node1": three["node1"]}); rs != nil {
		t.Errorf("self alone: %v", rs)
	}
	if rs := Split(vip, transport.TCP, 80, "node1", nil); rs != nil {
		t.Errorf("no nodes: %v", rs)
	}
	// The owner without an endpoint of its own relays every bucket.
	rs := Split(vip, transport.TCP, 80, "node9", map[string]netip.Addr{"node2": three["node2"]})
	if len(rs) != 1 || rs[0].From != FirstPort || rs[0].To != LastPort || rs[0].Node != "node2" {
		t.Errorf("owner without endpoints, one other node: %+v", rs)
	}
}

func TestSplitIsEvenOverManyAddresses(t *testing.T) {
	count := map[string]int{}
	for i := range 256 {
		v := netip.MustParseAddr(fmt.Sprintf("10.1.%d.%d", i/16, i%16))
		of := owners(Split(v, transport.TCP, 443, "node1", three), "node1")
		for b := range Buckets {
			p, _ := BucketPorts(b)
			count[of(p)]++
		}
	}
	for n, c := range count {
		if share := float64(c) / (256 * Buckets); share < 0.30 || share > 0.37 {
			t.Errorf("%s takes %.3f of the buckets, want about a third (%v)", n, share, count)
		}
	}
}

// Clients take their source ports from the upper half: with ten nodes, a node still gets
// a share of a Linux client's flows (32768–60999) for nearly every address.
func TestSplitReachesEveryNodeFromClientPorts(t *testing.T) {
	nodes := map[string]netip.Addr{}
	for i := range 10 {
		nodes[fmt.Sprintf("node%d", i)] = netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})
	}
	empty, total := 0, 0
	for i := range 200 {
		v := netip.AddrFrom4([4]byte{10, 2, byte(i / 200), byte(i % 200)})
		of := owners(Split(v, transport.TCP, 443, "node0", nodes), "node0")
		got := map[string]bool{}
		for p := 32768; p <= 60999; p += 16 {
			got[of(uint16(p))] = true
		}
		empty += len(nodes) - len(got)
		total += len(nodes)
	}
	if share := float64(empty) / float64(total); share > 0.02 {
		t.Errorf("%.1f%% of (address, node) pairs get none of a Linux client's flows", 100*share)
	}
}
