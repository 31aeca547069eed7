package election

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func node(name string) Node {
	return Node{Name: name, SpeakerAlive: true, Ready: true, Selected: true}
}

func TestEligible(t *testing.T) {
	local := Service{Local: true, EndpointNodes: map[string]bool{"a": true}}
	tests := []struct {
		name string
		n    Node
		svc  Service
		want Reason
	}{
		{"eligible", node("a"), Service{}, Announcing},
		{"speaker down", Node{Name: "a", Ready: true, Selected: true}, Service{}, SpeakerDown},
		{"not ready", Node{Name: "a", SpeakerAlive: true, Selected: true}, Service{}, NodeNotReady},
		{"excluded", Node{Name: "a", SpeakerAlive: true, Ready: true, Excluded: true, Selected: true}, Service{}, NodeExcluded},
		{"not selected", Node{Name: "a", SpeakerAlive: true, Ready: true}, Service{}, NotSelected},
		{"local with endpoint", node("a"), local, Announcing},
		{"local without endpoint", node("b"), local, NoLocalEndpoint},
		{"forwarding pool, no IPVS", node("a"), Service{Forward: true}, CannotForward},
		{"forwarding pool, IPVS", Node{Name: "a", SpeakerAlive: true, Ready: true, Selected: true, CanForward: true}, Service{Forward: true}, Announcing},
		{"pool without forwarding, no IPVS", node("a"), Service{}, Announcing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, why := Eligible(tt.n, tt.svc)
			if why != tt.want || ok != (tt.want == Announcing) {
				t.Errorf("Eligible = %v, %v; want %v", ok, why, tt.want)
			}
		})
	}
}

func TestLayer2Reasons(t *testing.T) {
	ip := netip.MustParseAddr("192.168.10.90")
	nodes := []Node{node("a"), node("b"), node("c")}
	owner, ok := Owner(ip, nodes, Service{})
	if !ok {
		t.Fatal("no owner")
	}
	for _, n := range nodes {
		got, why := Layer2(n.Name, ip, nodes, Service{})
		if got != (n.Name == owner) || (got && why != Announcing) || (!got && why != NotOwner) {
			t.Errorf("Layer2(%s) = %v, %v with owner %s", n.Name, got, why, owner)
		}
	}
	if _, why := Layer2("nobody", ip, nodes, Service{}); why != SpeakerDown {
		t.Errorf("unknown node: %v", why)
	}
	if _, ok := Owner(ip, nil, Service{}); ok {
		t.Error("owner among no nodes")
	}
	local := Service{Local: true, EndpointNodes: map[string]bool{"c": true}}
	if o, _ := Owner(ip, nodes, local); o != "c" {
		t.Errorf("Local service owned by %s, want c (the only node with an endpoint)", o)
	}
}

// Every speaker with the same view, whatever order it lists nodes in, picks the same
// single owner.
func TestPropertySameViewSameOwner(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 2000 {
		var nodes []Node
		for i := range 1 + r.IntN(20) {
			nodes = append(nodes, Node{Name: fmt.Sprintf("node-%d", i), SpeakerAlive: r.IntN(5) > 0, Ready: r.IntN(8) > 0, Selected: true})
		}
		ip := netip.AddrFrom4([4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
		want, wantOK := Owner(ip, nodes, Service{})
		shuffled := append([]Node(nil), nodes...)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got, ok := Owner(ip, shuffled, Service{})
		if got != want || ok != wantOK {
			t.Fatalf("trial %d: owner %q/%v in one order, %q/%v in another", trial, want, wantOK, got, ok)
		}
		owners := 0
		for _, n := range nodes {
			if a, _ := Layer2(n.Name, ip, nodes, Service{}); a {
				owners++
			}
		}
		if wantOK && owners != 1 || !wantOK && owners != 0 {
			t.Fatalf("trial %d: %d nodes announce %s", trial, owners, ip)
		}
	}
}

// A node that leaves moves only the addresses it owned, and the addresses spread evenly.
func TestPropertyMinimalMovement(t *testing.T) {
	var nodes []Node
	for i := range 10 {
		nodes = append(nodes, node(fmt.Sprintf("worker-%02d", i)))
	}
	before := map[netip.Addr]string{}
	count := map[string]int{}
	ip := netip.MustParseAddr("10.0.0.0")
	for range 10000 {
		ip = ip.Next()
		o, _ := Owner(ip, nodes, Service{})
		before[ip] = o
		count[o]++
	}
	for n, c := range count {
		if c < 800 || c > 1200 {
			t.Errorf("%s owns %d of 10000 addresses; want about 1000", n, c)
		}
	}
	gone := nodes[3].Name
	nodes[3].SpeakerAlive = false
	for ip, was := range before {
		now, _ := Owner(ip, nodes, Service{})
		if was != gone && now != was {
			t.Fatalf("%s moved from %s to %s though %s was not the one leaving", ip, was, now, was)
		}
		if was == gone && now == gone {
			t.Fatalf("%s still owned by the node that left", ip)
		}
	}
}

func TestAnnouncers(t *testing.T) {
	nodes := []Node{node("c"), node("a"), {Name: "b", Ready: true, Selected: true}}
	got := Announcers(nodes, Service{})
	if fmt.Sprint(got) != "[a c]" {
		t.Errorf("Announcers = %v, want [a c]", got)
	}
}

func BenchmarkOwner50Nodes(b *testing.B) {
	var nodes []Node
	for i := range 50 {
		nodes = append(nodes, node(fmt.Sprintf("node-%d", i)))
	}
	ip := netip.MustParseAddr("192.168.10.90")
	for b.Loop() {
		Owner(ip, nodes, Service{})
	}
}

// The owner of an address must not change when Herald is upgraded: speakers of two
// versions elect side by side during a rolling update. These weights were computed by
// the hash as first released.
func TestScoreIsStable(t *testing.T) {
	for _, c := range []struct {
		node, ip string
		want     uint64
	}{
		{"node1", "192.168.10.90", 0x77bcdd96ae49eb4},
		{"worker-a", "fd10::1", 0x6b4ca88cc9099455},
		{"", "0.0.0.0", 0x4d20d9bb912c7e25},
	} {
		if got := score(c.node, netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("score(%q, %s) = %#x, want %#x", c.node, c.ip, got, c.want)
		}
	}
}

func TestSpread(t *testing.T) {
	nodes := []string{"a", "b", "c"}
	key := []byte{1, 2, 3}
	got := Spread(key, nodes, 64)
	count := map[string]int{}
	for _, n := range got {
		count[n]++
	}
	if len(got) != 64 || len(count) != 3 {
		t.Fatalf("Spread over 3 nodes gave %v", count)
	}
	// Whatever the order the nodes come in, the same answer; the key is not written to.
	if again := Spread(key, []string{"c", "a", "b"}, 64); fmt.Sprint(again) != fmt.Sprint(got) || fmt.Sprint(key) != "[1 2 3]" {
		t.Errorf("Spread depends on the nodes' order, or wrote its key")
	}
	if Spread(key, nil, 64) != nil || Spread(key, nodes, 0) != nil {
		t.Error("Spread of nothing gave something")
	}
}
