package netlab

import (
	"net/netip"
	"testing"
	"time"
)

// Two clients in two namespaces, each with an eth0 of a different index, probed from one
// process: the second must not be resolved through what the first left in Go's
// process-wide zone cache (the e2e tests open a prober per cluster, one after another).
func TestProbersInNamespacesWithTheSameInterfaceName(t *testing.T) {
	Require(t)
	for i := range 2 {
		client, peer := NewNS(t, "client"), NewNS(t, "peer")
		for range i { // shift the next indexes, so that this eth0 differs from the last one
			client.Run("ip", "link", "add", "pad0", "type", "veth", "peer", "name", "pad1")
		}
		Veth(t, client, "eth0", peer, "p0")
		client.Addr("eth0", "192.0.2.2/24")
		peer.Addr("p0", "192.0.2.1/24")
		peer.Addr("p0", "fd00:2::1/64")
		p := NewProber(t, client, "eth0", netip.MustParseAddr("192.0.2.2"))
		t.Logf("client %d: eth0 has index %d", i, p.Ifi.Index)

		target := netip.MustParseAddr("fd00:2::1")
		var macs []string
		for range 20 { // the peer's address may still be settling
			var err error
			if macs, err = p.AskNDP(target, 200*time.Millisecond); err != nil {
				t.Fatalf("client %d: ask %s: %v", i, target, err)
			}
			if len(macs) > 0 {
				break
			}
		}
		if want := peer.MAC("p0"); len(macs) != 1 || macs[0] != want {
			t.Fatalf("client %d: %s answered by %v, want [%s]", i, target, macs, want)
		}
		arp, err := p.AskARP(netip.MustParseAddr("192.0.2.1"), 200*time.Millisecond)
		if want := peer.MAC("p0"); err != nil || len(arp) != 1 || arp[0] != want {
			t.Fatalf("client %d: 192.0.2.1 answered by %v (%v), want [%s]", i, arp, err, want)
		}
	}
}
