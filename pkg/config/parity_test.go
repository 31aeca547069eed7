package config

import (
	"strings"
	"testing"
)

// TestMetalLBParity holds one case per rule that MetalLB 0.12.1's configuration parser
// (internal/config/config.go, Parse and the functions it calls: yaml.UnmarshalStrict,
// parsePeer, parseHoldTime/keepalive, parseNodeSelector through
// metav1.LabelSelectorAsSelector, parseBFDProfile, parseCommunity, parseAddressPool,
// parseCIDR, parseBGPAdvertisements and the overlap check) enforces, with the field
// Herald names for it. The last cases are configurations MetalLB accepts, which Herald
// must accept too.
func TestMetalLBParity(t *testing.T) {
	peer := func(fields string) string {
		return "peers:\n- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501" + fields + "}\n"
	}
	pool := func(fields string) string {
		return "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.0/24]" + fields + "}\n"
	}
	bgpPool := func(addrs, adv string) string {
		return "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [" + addrs + "]\n  bgp-advertisements:\n  - " + adv + "\n"
	}
	tests := []struct {
		rule, text, path string // path "" means the configuration is accepted
	}{
		{"yaml.UnmarshalStrict: unknown key", "adress-pools: []\n", "adress-pools"},
		{"yaml.UnmarshalStrict: key given twice", "peers: []\npeers: []\n", "peers"},
		{"yaml.UnmarshalStrict: value of the wrong type", peer(", peer-port: high"), "peers[0].peer-port"},
		{"parsePeer: missing local ASN", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 64500}\n", "peers[0].my-asn"},
		{"parsePeer: missing peer ASN", "peers:\n- {peer-address: 10.0.0.1, my-asn: 64501}\n", "peers[0].peer-asn"},
		{"parsePeer: ebgp-multihop set for an iBGP peer", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64500, ebgp-multihop: true}\n", "peers[0].ebgp-multihop"},
		{"parsePeer: invalid peer IP", "peers:\n- {peer-address: 10.0.0.300, peer-asn: 1, my-asn: 2}\n", "peers[0].peer-address"},
		{"parseHoldTime: not a duration", peer(", hold-time: soon"), "peers[0].hold-time"},
		{"parseHoldTime: not 0 and under 3s", peer(", hold-time: 2s"), "peers[0].hold-time"},
		{"keepalive: longer than the hold time", peer(", hold-time: 9s, keepalive-time: 10s"), "peers[0].keepalive-time"},
		{"keepalive: not a duration", peer(", keepalive-time: often"), "peers[0].keepalive-time"},
		{"parsePeer: invalid router ID", peer(", router-id: 10.0.0.300"), "peers[0].router-id"},
		{"parsePeer: invalid source IP", peer(", source-address: nowhere"), "peers[0].source-address"},
		{"parseNodeSelector: unknown operator", peer(", node-selectors: [{match-expressions: [{key: k, operator: Gt, values: ['1']}]}]"), "peers[0].node-selectors[0].match-expressions[0].operator"},
		{"parseNodeSelector: In without values", peer(", node-selectors: [{match-expressions: [{key: k, operator: In}]}]"), "peers[0].node-selectors[0].match-expressions[0].values"},
		{"parseNodeSelector: Exists with values", peer(", node-selectors: [{match-expressions: [{key: k, operator: Exists, values: [a]}]}]"), "peers[0].node-selectors[0].match-expressions[0].values"},
		{"parseNodeSelector: invalid label key", peer(", node-selectors: [{match-labels: {'-rack': r1}}]"), "peers[0].node-selectors[0].match-labels.-rack"},
		{"parseNodeSelector: invalid label key in an expression", peer(", node-selectors: [{match-expressions: [{key: 'a b', operator: Exists}]}]"), "peers[0].node-selectors[0].match-expressions[0].key"},
		{"parseNodeSelector: invalid label value", peer(", node-selectors: [{match-labels: {rack: 'r 1'}}]"), "peers[0].node-selectors[0].match-labels.rack"},
		{"parseNodeSelector: invalid label value in an expression", peer(", node-selectors: [{match-expressions: [{key: k, operator: In, values: ['-a']}]}]"), "peers[0].node-selectors[0].match-expressions[0].values[0]"},
		{"Parse: peer referencing a missing BFD profile", peer(", bfd-profile: slow"), "peers[0].bfd-profile"},
		{"Parse: peer already exists", peer("") + "- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501}\n", "peers[1]"},
		{"parseBFDProfile: missing name", "bfd-profiles:\n- {receive-interval: 100}\n", "bfd-profiles[0].name"},
		{"Parse: duplicate BFD profile name", "bfd-profiles:\n- {name: a}\n- {name: a}\n", "bfd-profiles[1].name"},
		{"parseBFDProfile: receive-interval outside 10-60000", "bfd-profiles:\n- {name: a, receive-interval: 9}\n", "bfd-profiles[0].receive-interval"},
		{"parseBFDProfile: transmit-interval outside 10-60000", "bfd-profiles:\n- {name: a, transmit-interval: 60001}\n", "bfd-profiles[0].transmit-interval"},
		{"parseBFDProfile: detect-multiplier outside 2-255", "bfd-profiles:\n- {name: a, detect-multiplier: 256}\n", "bfd-profiles[0].detect-multiplier"},
		{"parseBFDProfile: echo-interval outside 10-60000", "bfd-profiles:\n- {name: a, echo-interval: 5}\n", "bfd-profiles[0].echo-interval"},
		{"parseBFDProfile: minimum-ttl outside 1-254", "bfd-profiles:\n- {name: a, minimum-ttl: 255}\n", "bfd-profiles[0].minimum-ttl"},
		{"parseCommunity: bgp-communities value", "bgp-communities: {x: '65536:1'}\n", "bgp-communities.x"},
		{"parseAddressPool: missing pool name", "address-pools:\n- {protocol: layer2, addresses: [10.0.0.0/24]}\n", "address-pools[0].name"},
		{"Parse: duplicate definition of pool", pool("") + "- {name: p, protocol: layer2, addresses: [10.1.0.0/24]}\n", "address-pools[1].name"},
		{"parseAddressPool: pool has no prefixes defined", "address-pools:\n- {name: p, protocol: layer2}\n", "address-pools[0].addresses"},
		{"parseCIDR: invalid CIDR", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.0/33]}\n", "address-pools[0].addresses[0]"},
		{"parseCIDR: invalid start IP of a range", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.x-10.0.0.9]}\n", "address-pools[0].addresses[0]"},
		{"parseCIDR: invalid end IP of a range", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.1-10.0.0.x]}\n", "address-pools[0].addresses[0]"},
		{"parseCIDR: range start after its end", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.9-10.0.0.1]}\n", "address-pools[0].addresses[0]"},
		{"Parse: CIDR overlaps an already defined CIDR", pool("") + "- {name: q, protocol: layer2, addresses: [10.0.0.128/25]}\n", "address-pools[1].addresses[0]"},
		{"parseAddressPool: missing protocol", "address-pools:\n- {name: p, addresses: [10.0.0.0/24]}\n", "address-pools[0].protocol"},
		{"parseAddressPool: unknown protocol", "address-pools:\n- {name: p, protocol: ospf, addresses: [10.0.0.0/24]}\n", "address-pools[0].protocol"},
		{"parseAddressPool: bgp-advertisements in a layer2 pool", pool(", bgp-advertisements: [{localpref: 1}]"), "address-pools[0].bgp-advertisements"},
		{"parseBGPAdvertisements: aggregation-length over 32", bgpPool("10.0.0.0/24", "{aggregation-length: 33}"), "address-pools[0].bgp-advertisements[0].aggregation-length"},
		{"parseBGPAdvertisements: aggregation-length shorter than a prefix of the pool", bgpPool("10.0.0.0/24", "{aggregation-length: 23}"), "address-pools[0].bgp-advertisements[0].aggregation-length"},
		{"parseBGPAdvertisements: aggregation-length-v6 over 128", bgpPool("'fd00::/64'", "{aggregation-length-v6: 129}"), "address-pools[0].bgp-advertisements[0].aggregation-length-v6"},
		{"parseBGPAdvertisements: aggregation-length-v6 shorter than a prefix of the pool", bgpPool("'fd00::/64'", "{aggregation-length-v6: 63}"), "address-pools[0].bgp-advertisements[0].aggregation-length-v6"},
		{"parseBGPAdvertisements: invalid community", bgpPool("10.0.0.0/24", "{communities: ['1:2:3']}"), "address-pools[0].bgp-advertisements[0].communities[0]"},
		{"parseBGPAdvertisements: localpref not a number", bgpPool("10.0.0.0/24", "{localpref: high}"), "address-pools[0].bgp-advertisements[0].localpref"},

		// Accepted by MetalLB 0.12.1, so accepted here.
		{"accepted: a range's widest prefix decides the aggregation", bgpPool("10.0.0.0-10.0.0.2", "{aggregation-length: 31}"), ""},
		{"accepted: hold-time 0 (no keepalives)", peer(", hold-time: 0s"), ""},
		{"accepted: eBGP multihop", peer(", ebgp-multihop: true"), ""},
		{"accepted: a prefixed label key", peer(", node-selectors: [{match-labels: {'kubernetes.io/hostname': node-1}}]"), ""},
		{"accepted: a community alias", "bgp-communities: {no-export: '65535:65281'}\n" + bgpPool("10.0.0.0/24", "{communities: [no-export]}"), ""},
		{"accepted: host bits in a CIDR", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.5/24]}\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			_, err := Parse([]byte(tt.text))
			if tt.path == "" {
				if err != nil {
					t.Fatalf("refused what MetalLB 0.12.1 accepts: %v", err)
				}
				return
			}
			var es Errors
			if err == nil {
				t.Fatalf("accepted what MetalLB 0.12.1 refuses")
			}
			es = err.(Errors)
			for _, e := range es {
				if e.Path == tt.path {
					return
				}
			}
			t.Errorf("no error at %s: %v", tt.path, strings.ReplaceAll(err.Error(), "; ", "\n"))
		})
	}
}
