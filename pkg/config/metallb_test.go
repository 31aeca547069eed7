package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// MetalLB 0.12 parity.
//
// TestMetalLBCases runs the configuration cases of MetalLB v0.12.1's own parser test
// (internal/config/config_test.go, TestParse): all 49 documents as MetalLB's table holds
// them, each with MetalLB's verdict. Herald must accept what MetalLB accepts, with the same
// model where the two models meet, and refuse what MetalLB refuses, naming the field.
// When the two disagree, Herald is wrong: fix the parser, never a case.
//
// TestMetalLBRules adds the rules of MetalLB 0.12.1's parser (config.go: yaml.UnmarshalStrict,
// parsePeer, the hold and keepalive times, parseNodeSelector through
// metav1.LabelSelectorAsSelector, parseBFDProfile, parseCIDR, parseBGPAdvertisements) that
// its own table does not exercise, one case each.

// metallbModel is Herald's Config seen the way MetalLB 0.12.1's Config is shaped, so that
// a case's expectation reads like MetalLB's: pools by name, their addresses as the CIDRs
// MetalLB splits them into, node selectors in label-selector syntax, communities as a set.
// Herald's own additions (forwarding, interfaces, large communities) are left out.
type metallbModel struct {
	Peers       []metallbPeer
	Pools       map[string]metallbPool
	BFDProfiles map[string]BFDProfile
}

type metallbPeer struct {
	MyASN, ASN              uint32
	Addr, SrcAddr, RouterID netip.Addr // zero when unset
	Port                    uint16
	HoldTime, KeepaliveTime time.Duration
	NodeSelectors           []string // label-selector syntax; "" selects every node
	EBGPMultiHop            bool
	BFDProfile              string
}

type metallbPool struct {
	Protocol       Protocol
	CIDR           []string
	AvoidBuggyIPs  bool
	AutoAssign     bool
	Advertisements []metallbAdvertisement
}

type metallbAdvertisement struct {
	AggregationLength, AggregationLengthV6 int
	LocalPref                              uint32
	Communities                            []uint32 // sorted
}

// everyNode is MetalLB's node selector of a peer without node-selectors: labels.Everything(),
// whose string is empty.
var everyNode = []string{""}

// defaultAdvertisement is the one MetalLB gives a BGP pool that lists none.
var defaultAdvertisement = []metallbAdvertisement{{AggregationLength: 32, AggregationLengthV6: 128}}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func metallbView(c *Config) *metallbModel {
	m := &metallbModel{Pools: map[string]metallbPool{}, BFDProfiles: map[string]BFDProfile{}}
	for _, p := range c.Peers {
		mp := metallbPeer{
			MyASN: p.MyASN, ASN: p.ASN, Addr: p.Address, SrcAddr: p.SourceAddress, RouterID: p.RouterID,
			Port: p.Port, HoldTime: p.HoldTime, KeepaliveTime: p.KeepaliveTime,
			EBGPMultiHop: p.EBGPMultiHop, BFDProfile: p.BFDProfile, NodeSelectors: everyNode,
		}
		if len(p.NodeSelectors) > 0 {
			mp.NodeSelectors = nil
			for _, s := range p.NodeSelectors {
				mp.NodeSelectors = append(mp.NodeSelectors, selectorString(s))
			}
		}
		m.Peers = append(m.Peers, mp)
	}
	for _, p := range c.Pools {
		mp := metallbPool{Protocol: p.Protocol, AvoidBuggyIPs: p.AvoidBuggyIPs, AutoAssign: p.AutoAssign}
		for _, r := range p.Addresses {
			for _, pfx := range r.Prefixes() {
				mp.CIDR = append(mp.CIDR, pfx.String())
			}
		}
		for _, a := range p.Advertisements {
			ma := metallbAdvertisement{AggregationLength: a.AggregationLength, AggregationLengthV6: a.AggregationLengthV6, LocalPref: a.LocalPref}
			for _, c := range a.Communities {
				ma.Communities = append(ma.Communities, uint32(c))
			}
			slices.Sort(ma.Communities)
			mp.Advertisements = append(mp.Advertisements, ma)
		}
		m.Pools[p.Name] = mp
	}
	for _, b := range c.BFDProfiles {
		m.BFDProfiles[b.Name] = b
	}
	return m
}

// selectorString writes s in Kubernetes label-selector syntax, requirements sorted by key,
// as labels.Selector.String() does.
func selectorString(s NodeSelector) string {
	type req struct{ key, text string }
	var rs []req
	for k, v := range s.MatchLabels {
		rs = append(rs, req{k, k + "=" + v})
	}
	for _, r := range s.MatchExpressions {
		vals := slices.Sorted(slices.Values(r.Values))
		var text string
		switch r.Operator {
		case "In":
			text = fmt.Sprintf("%s in (%s)", r.Key, strings.Join(vals, ","))
		case "NotIn":
			text = fmt.Sprintf("%s notin (%s)", r.Key, strings.Join(vals, ","))
		case "Exists":
			text = r.Key
		case "DoesNotExist":
			text = "!" + r.Key
		}
		rs = append(rs, req{r.Key, text})
	}
	slices.SortStableFunc(rs, func(a, b req) int { return strings.Compare(a.key, b.key) })
	var parts []string
	for _, r := range rs {
		parts = append(parts, r.text)
	}
	return strings.Join(parts, ",")
}

// metallbCases are MetalLB v0.12.1's TestParse documents, in its order. upstream is the
// case's description there; want is nil for a document MetalLB refuses.
var metallbCases = []struct {
	name      string
	upstream  string
	text      string
	want      *metallbModel // accepted, with this model
	refusedAt string        // refused, with an error at this field path ("" for the document)
	warnAt    string        // accepted with a warning at this field path
}{
	{
		name:     "empty document",
		upstream: "empty config",
		text:     "",
		want:     &metallbModel{Pools: map[string]metallbPool{}, BFDProfiles: map[string]BFDProfile{}},
	},
	{
		name:      "not YAML",
		upstream:  "invalid yaml",
		text:      "foo:<>$@$2r24j90",
		refusedAt: "",
	},
	{
		name:     "every feature of the format",
		upstream: "config using all features",
		text: `
peers:
- my-asn: 42
  peer-asn: 142
  peer-address: 1.2.3.4
  peer-port: 1179
  hold-time: 180s
  router-id: 10.20.30.40
  source-address: 10.20.30.40
  ebgp-multihop: true
- my-asn: 100
  peer-asn: 200
  peer-address: 2.3.4.5
  ebgp-multihop: false
  node-selectors:
  - match-labels:
      foo: bar
    match-expressions:
      - {key: bar, operator: In, values: [quux]}
bgp-communities:
  bar: 64512:1234
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 10.20.0.0/16
  - 10.50.0.0/24
  avoid-buggy-ips: true
  auto-assign: false
  bgp-advertisements:
  - aggregation-length: 32
    localpref: 100
    communities: ["bar", "1234:2345"]
  - aggregation-length: 24
    aggregation-length-v6: 64
- name: pool2
  protocol: bgp
  addresses:
  - 30.0.0.0/8
- name: pool3
  protocol: layer2
  addresses:
  - 40.0.0.0/25
  - 40.0.0.150-40.0.0.200
  - 40.0.0.210 - 40.0.0.240
  - 40.0.0.250 - 40.0.0.250
- name: pool4
  protocol: layer2
  addresses:
  - 2001:db8::/64
`,
		want: &metallbModel{
			Peers: []metallbPeer{
				{MyASN: 42, ASN: 142, Addr: ip("1.2.3.4"), SrcAddr: ip("10.20.30.40"), Port: 1179, HoldTime: 180 * time.Second, KeepaliveTime: 60 * time.Second, RouterID: ip("10.20.30.40"), NodeSelectors: everyNode, EBGPMultiHop: true},
				{MyASN: 100, ASN: 200, Addr: ip("2.3.4.5"), Port: 179, HoldTime: 90 * time.Second, KeepaliveTime: 30 * time.Second, NodeSelectors: []string{"bar in (quux),foo=bar"}},
			},
			Pools: map[string]metallbPool{
				"pool1": {Protocol: BGP, CIDR: []string{"10.20.0.0/16", "10.50.0.0/24"}, AvoidBuggyIPs: true, AutoAssign: false, Advertisements: []metallbAdvertisement{
					{AggregationLength: 32, AggregationLengthV6: 128, LocalPref: 100, Communities: []uint32{0x04d20929, 0xfc0004d2}},
					{AggregationLength: 24, AggregationLengthV6: 64},
				}},
				"pool2": {Protocol: BGP, CIDR: []string{"30.0.0.0/8"}, AutoAssign: true, Advertisements: defaultAdvertisement},
				"pool3": {Protocol: Layer2, AutoAssign: true, CIDR: []string{
					"40.0.0.0/25",
					"40.0.0.150/31", "40.0.0.152/29", "40.0.0.160/27", "40.0.0.192/29", "40.0.0.200/32",
					"40.0.0.210/31", "40.0.0.212/30", "40.0.0.216/29", "40.0.0.224/28", "40.0.0.240/32",
					"40.0.0.250/32",
				}},
				"pool4": {Protocol: Layer2, CIDR: []string{"2001:db8::/64"}, AutoAssign: true},
			},
			BFDProfiles: map[string]BFDProfile{},
		},
	},
	{
		name:     "a peer and nothing else",
		upstream: "peer-only",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
`,
		want: &metallbModel{
			Peers:       []metallbPeer{{MyASN: 42, ASN: 42, Addr: ip("1.2.3.4"), Port: 179, HoldTime: 90 * time.Second, KeepaliveTime: 30 * time.Second, NodeSelectors: everyNode}},
			Pools:       map[string]metallbPool{},
			BFDProfiles: map[string]BFDProfile{},
		},
	},
	{
		name:     "peer-address not an address",
		upstream: "invalid peer-address",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.400
`,
		refusedAt: "peers[0].peer-address",
	},
	{
		name:     "my-asn missing",
		upstream: "invalid my-asn",
		text: `
peers:
- peer-asn: 42
  peer-address: 1.2.3.4
`,
		refusedAt: "peers[0].my-asn",
	},
	{
		name:     "peer-asn missing",
		upstream: "invalid peer-asn",
		text: `
peers:
- my-asn: 42
  peer-address: 1.2.3.4
`,
		refusedAt: "peers[0].peer-asn",
	},
	{
		name:     "ebgp-multihop on an iBGP session",
		upstream: "invalid ebgp-multihop",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  ebgp-multihop: true
`,
		refusedAt: "peers[0].ebgp-multihop",
	},
	{
		name:     "hold-time not a duration",
		upstream: "invalid hold time (wrong format)",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  hold-time: foo
`,
		refusedAt: "peers[0].hold-time",
	},
	{
		name:     "hold-time under 3s",
		upstream: "invalid hold time (too short)",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  hold-time: 1s
`,
		refusedAt: "peers[0].hold-time",
	},
	{
		name:     "router-id not an address",
		upstream: "invalid router ID",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  router-id: oh god how do I BGP
`,
		refusedAt: "peers[0].router-id",
	},
	{
		name:     "no node-selectors: every node",
		upstream: "empty node selector (select everything)",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
`,
		want: &metallbModel{
			Peers:       []metallbPeer{{MyASN: 42, ASN: 42, Addr: ip("1.2.3.4"), Port: 179, HoldTime: 90 * time.Second, KeepaliveTime: 30 * time.Second, NodeSelectors: everyNode}},
			Pools:       map[string]metallbPool{},
			BFDProfiles: map[string]BFDProfile{},
		},
	},
	{
		name:     "match-labels value is a mapping",
		upstream: "invalid label node selector shape",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  node-selectors:
  - match-labels:
      foo:
        bar: baz
`,
		refusedAt: "peers[0].node-selectors[0].match-labels.foo",
	},
	{
		name:     "match-expressions entry without key",
		upstream: "invalid expression node selector (missing key)",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  node-selectors:
  - match-expressions:
    - operator: In
      values: [foo, bar]
`,
		refusedAt: "peers[0].node-selectors[0].match-expressions[0].key",
	},
	{
		name:     "match-expressions entry without operator",
		upstream: "invalid expression node selector (missing operator)",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  node-selectors:
  - match-expressions:
    - key: foo
      values: [foo, bar]
`,
		refusedAt: "peers[0].node-selectors[0].match-expressions[0].operator",
	},
	{
		name:     "match-expressions operator unknown",
		upstream: "invalid expression node selector (invalid operator)",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  node-selectors:
  - match-expressions:
    - key: foo
      operator: Surrounds
      values: [foo, bar]
`,
		refusedAt: "peers[0].node-selectors[0].match-expressions[0].operator",
	},
	{
		name:     "router-id not an address, second copy in the upstream table",
		upstream: "invalid router ID",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  router-id: oh god how do I BGP
`,
		refusedAt: "peers[0].router-id",
	},
	{
		name:     "the same peer twice",
		upstream: "duplicate peers",
		text: `
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
`,
		refusedAt: "peers[1]",
	},
	{
		name:     "pool entry left empty",
		upstream: "no pool name",
		text: `
address-pools:
-
`,
		refusedAt: "address-pools[0].name",
	},
	{
		name:     "pool without addresses",
		upstream: "address pool with no addresses",
		text: `
address-pools:
- name: pool1
  protocol: bgp
`,
		refusedAt: "address-pools[0].addresses",
	},
	{
		name:     "pool without protocol",
		upstream: "address pool with no protocol",
		text: `
address-pools:
- name: pool1
`,
		refusedAt: "address-pools[0].protocol",
	},
	{
		name:     "pool protocol unknown",
		upstream: "address pool with unknown protocol",
		text: `
address-pools:
- name: pool1
  protocol: babel
`,
		refusedAt: "address-pools[0].protocol",
	},
	{
		name:     "pool CIDR with octets over 255",
		upstream: "invalid pool CIDR",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 100.200.300.400/24
`,
		refusedAt: "address-pools[0].addresses[0]",
	},
	{
		name:     "pool CIDR prefix length over 32",
		upstream: "invalid pool CIDR prefix length",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 1.2.3.0/33
`,
		refusedAt: "address-pools[0].addresses[0]",
	},
	{
		name:     "pool range that ends before it starts",
		upstream: "invalid pool CIDR, first address of the range is after the second",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 1.2.3.10-1.2.3.1
`,
		refusedAt: "address-pools[0].addresses[0]",
	},
	{
		name:     "advertisement entry left empty: defaults",
		upstream: "simple advertisement",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses: ["1.2.3.0/24"]
  bgp-advertisements:
  -
`,
		want: &metallbModel{
			Pools:       map[string]metallbPool{"pool1": {Protocol: BGP, AutoAssign: true, CIDR: []string{"1.2.3.0/24"}, Advertisements: defaultAdvertisement}},
			BFDProfiles: map[string]BFDProfile{},
		},
	},
	{
		name:     "BGP pool without advertisements: one default",
		upstream: "advertisement with default BGP settings",
		text: `
address-pools:
- name: pool1
  addresses: ["1.2.3.0/24"]
  protocol: bgp
`,
		want: &metallbModel{
			Pools:       map[string]metallbPool{"pool1": {Protocol: BGP, AutoAssign: true, CIDR: []string{"1.2.3.0/24"}, Advertisements: defaultAdvertisement}},
			BFDProfiles: map[string]BFDProfile{},
		},
	},
	{
		name:     "aggregation-length over 32",
		upstream: "bad aggregation length (too long)",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - aggregation-length: 33
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].aggregation-length",
	},
	{
		name:     "aggregation-length shorter than a pool prefix",
		upstream: "bad aggregation length (incompatible with CIDR)",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 10.20.30.40/24
  - 1.2.3.0/28
  bgp-advertisements:
  - aggregation-length: 26
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].aggregation-length",
	},
	{
		name:     "aggregation-length decided by a range's widest prefix",
		upstream: "aggregation length by range",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 3.3.3.2-3.3.3.254
  bgp-advertisements:
  - aggregation-length: 26
`,
		want: &metallbModel{
			Pools: map[string]metallbPool{"pool1": {Protocol: BGP, AutoAssign: true,
				CIDR: []string{
					"3.3.3.2/31", "3.3.3.4/30", "3.3.3.8/29", "3.3.3.16/28", "3.3.3.32/27", "3.3.3.64/26",
					"3.3.3.128/26", "3.3.3.192/27", "3.3.3.224/28", "3.3.3.240/29", "3.3.3.248/30", "3.3.3.252/31", "3.3.3.254/32",
				},
				Advertisements: []metallbAdvertisement{{AggregationLength: 26, AggregationLengthV6: 128}},
			}},
			BFDProfiles: map[string]BFDProfile{},
		},
	},
	{
		name:     "aggregation-length shorter than a range's widest prefix",
		upstream: "aggregation length by range, too wide",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 3.3.3.2-3.3.3.254
  bgp-advertisements:
  - aggregation-length: 24
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].aggregation-length",
	},
	{
		name:     "community without a colon",
		upstream: "bad community literal (wrong format)",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - communities: ["1234"]
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].communities[0]",
	},
	{
		name:     "community high part over 65535",
		upstream: "bad community literal (asn part doesn't fit)",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - communities: ["99999999:1"]
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].communities[0]",
	},
	{
		name:     "community low part over 65535",
		upstream: "bad community literal (community# part doesn't fit)",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - communities: ["1:99999999"]
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].communities[0]",
	},
	{
		name:     "community alias not defined",
		upstream: "bad community ref (unknown ref)",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - communities: ["flarb"]
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].communities[0]",
	},
	{
		name:     "community alias with high part over 65535",
		upstream: "bad community ref (ref asn doesn't fit)",
		text: `
bgp-communities:
  flarb: 99999999:1
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - communities: ["flarb"]
`,
		refusedAt: "bgp-communities.flarb",
	},
	{
		name:     "community alias with low part over 65535",
		upstream: "bad community ref (ref community# doesn't fit)",
		text: `
bgp-communities:
  flarb: 1:99999999
address-pools:
- name: pool1
  protocol: bgp
  bgp-advertisements:
  - communities: ["flarb"]
`,
		refusedAt: "bgp-communities.flarb",
	},
	{
		name:     "the same pool name twice",
		upstream: "duplicate pool definition",
		text: `
address-pools:
- name: pool1
  protocol: bgp
- name: pool1
  protocol: bgp
- name: pool2
  protocol: bgp
`,
		refusedAt: "address-pools[1].name",
	},
	{
		name:     "the same CIDR in two pools",
		upstream: "duplicate CIDRs",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 10.0.0.0/8
- name: pool2
  protocol: bgp
  addresses:
  - 10.0.0.0/8
`,
		refusedAt: "address-pools[1].addresses[0]",
	},
	{
		name:     "a CIDR inside another pool's",
		upstream: "overlapping CIDRs",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 10.0.0.0/8
- name: pool2
  protocol: bgp
  addresses:
  - 10.0.0.0/16
`,
		refusedAt: "address-pools[1].addresses[0]",
	},
	{
		name:     "bgp-advertisements on a layer2 pool",
		upstream: "BGP advertisements in layer2 pool",
		text: `
address-pools:
- name: pool1
  protocol: layer2
  addresses:
  - 10.0.0.0/16
  bgp-advertisements:
  - communities: ["flarb"]
`,
		refusedAt: "address-pools[0].bgp-advertisements",
	},
	{
		name:     "peer with a BFD profile of defaults",
		upstream: "Session with default BFD Profile",
		text: `
address-pools:
- name: pool1
  addresses: ["1.2.3.0/24"]
  protocol: bgp
bfd-profiles:
- name: default
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  bfd-profile: default
`,
		want: &metallbModel{
			Peers:       []metallbPeer{{MyASN: 42, ASN: 42, Addr: ip("1.2.3.4"), Port: 179, HoldTime: 90 * time.Second, KeepaliveTime: 30 * time.Second, NodeSelectors: everyNode, BFDProfile: "default"}},
			Pools:       map[string]metallbPool{"pool1": {Protocol: BGP, AutoAssign: true, CIDR: []string{"1.2.3.0/24"}, Advertisements: defaultAdvertisement}},
			BFDProfiles: map[string]BFDProfile{"default": {Name: "default"}},
		},
	},
	{
		name:     "peer naming a BFD profile not defined",
		upstream: "Peer with non existing BFD Profile",
		text: `
address-pools:
- name: pool1
  addresses: ["1.2.3.0/24"]
  protocol: bgp
bfd-profiles:
- name: default
peers:
- my-asn: 42
  peer-asn: 42
  peer-address: 1.2.3.4
  bfd-profile: zzz
`,
		refusedAt: "peers[0].bfd-profile",
	},
	{
		name:     "the same BFD profile name twice",
		upstream: "Multiple BFD Profiles with the same name",
		text: `
address-pools:
- name: pool1
  addresses: ["1.2.3.0/24"]
  protocol: bgp
bfd-profiles:
- name: default
- name: foo
- name: foo
`,
		refusedAt: "bfd-profiles[2].name",
	},
	{
		name:     "BFD profile with every key, echo mode on",
		upstream: "Session with nondefault BFD Profile",
		text: `
address-pools:
- name: pool1
  addresses: ["1.2.3.0/24"]
  protocol: bgp
bfd-profiles:
- name: nondefault
  receive-interval: 50
  transmit-interval: 51
  detect-multiplier: 52
  echo-interval: 54
  echo-mode: true
  passive-mode: true
  minimum-ttl: 55
`,
		want: &metallbModel{
			Pools: map[string]metallbPool{"pool1": {Protocol: BGP, AutoAssign: true, CIDR: []string{"1.2.3.0/24"}, Advertisements: defaultAdvertisement}},
			BFDProfiles: map[string]BFDProfile{"nondefault": {
				Name: "nondefault", ReceiveInterval: 50, TransmitInterval: 51, DetectMultiplier: 52,
				EchoInterval: 54, MinimumTTL: 55, EchoMode: true, PassiveMode: true,
			}},
		},
		warnAt: "bfd-profiles[0].echo-mode",
	},
	{
		name:     "BFD receive-interval under 10",
		upstream: "BFD Profile with too low receive interval",
		text: `
bfd-profiles:
- name: default
  receive-interval: 2
`,
		refusedAt: "bfd-profiles[0].receive-interval",
	},
	{
		name:     "BFD receive-interval over 60000",
		upstream: "BFD Profile with too high range receive interval",
		text: `
bfd-profiles:
- name: default
  receive-interval: 90000
`,
		refusedAt: "bfd-profiles[0].receive-interval",
	},
	{
		name:     "the same advertisement twice in a pool",
		upstream: "Duplicate bgp advertisment definition",
		text: `
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 10.20.0.0/16
  bgp-advertisements:
  - aggregation-length: 26
  - aggregation-length: 26
`,
		refusedAt: "address-pools[0].bgp-advertisements[1]",
	},
	{
		name:     "the same community twice in an advertisement",
		upstream: "Duplicate communities definition",
		text: `
bgp-communities:
  bar: 64512:1234
address-pools:
- name: pool1
  protocol: bgp
  addresses:
  - 10.20.0.0/16
  bgp-advertisements:
  - communities: ["bar", "bar"]
`,
		refusedAt: "address-pools[0].bgp-advertisements[0].communities[1]",
	},
}

func TestMetalLBCases(t *testing.T) {
	if n := len(metallbCases); n != 49 {
		t.Fatalf("%d cases; MetalLB v0.12.1's TestParse has 49", n)
	}
	for _, tt := range metallbCases {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.text))
			if tt.want == nil {
				if err == nil {
					t.Fatalf("accepted what MetalLB 0.12.1 refuses (upstream case %q)", tt.upstream)
				}
				requireErrorAt(t, err, tt.refusedAt)
				return
			}
			if err != nil {
				t.Fatalf("refused what MetalLB 0.12.1 accepts (upstream case %q): %v", tt.upstream, err)
			}
			if diff := cmp.Diff(tt.want, metallbView(cfg), cmpopts.EquateComparable(netip.Addr{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("model (-want +got):\n%s", diff)
			}
			var warned []string
			for _, w := range cfg.Warnings {
				warned = append(warned, w.Path)
			}
			var want []string
			if tt.warnAt != "" {
				want = []string{tt.warnAt}
			}
			if diff := cmp.Diff(want, warned, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s\n%v", diff, cfg.Warnings)
			}
		})
	}
}

// requireErrorAt fails t unless err is Errors with one error at path, each error naming
// a path (or, for the document as a whole, saying why).
func requireErrorAt(t *testing.T, err error, path string) {
	t.Helper()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v is not config.Errors", err)
	}
	for _, e := range es {
		if e.Path == path {
			return
		}
	}
	t.Errorf("no error at %q:\n%s", path, strings.ReplaceAll(err.Error(), "; ", "\n"))
}

// TestMetalLBRules holds one case for each rule of MetalLB 0.12.1's parser that
// metallbCases leaves untried, with the field Herald names for it; the last cases are
// documents MetalLB accepts.
func TestMetalLBRules(t *testing.T) {
	peer := func(fields string) string {
		return "peers:\n- {peer-address: 10.0.0.1, peer-asn: 64500, my-asn: 64501" + fields + "}\n"
	}
	bgpPool := func(addrs, adv string) string {
		return "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [" + addrs + "]\n  bgp-advertisements:\n  - " + adv + "\n"
	}
	tests := []struct {
		rule, text, path string // path "" means the document is accepted
	}{
		{"yaml.UnmarshalStrict: unknown key", "adress-pools: []\n", "adress-pools"},
		{"yaml.UnmarshalStrict: key given twice", "peers: []\npeers: []\n", "peers"},
		{"yaml.UnmarshalStrict: value of the wrong type", peer(", peer-port: high"), "peers[0].peer-port"},
		{"keepalive: longer than the hold time", peer(", hold-time: 9s, keepalive-time: 10s"), "peers[0].keepalive-time"},
		{"keepalive: not a duration", peer(", keepalive-time: often"), "peers[0].keepalive-time"},
		{"parsePeer: invalid source IP", peer(", source-address: nowhere"), "peers[0].source-address"},
		{"parseNodeSelector: In without values", peer(", node-selectors: [{match-expressions: [{key: k, operator: In}]}]"), "peers[0].node-selectors[0].match-expressions[0].values"},
		{"parseNodeSelector: Exists with values", peer(", node-selectors: [{match-expressions: [{key: k, operator: Exists, values: [a]}]}]"), "peers[0].node-selectors[0].match-expressions[0].values"},
		{"parseNodeSelector: invalid label key", peer(", node-selectors: [{match-labels: {'-rack': r1}}]"), "peers[0].node-selectors[0].match-labels.-rack"},
		{"parseNodeSelector: invalid label key in an expression", peer(", node-selectors: [{match-expressions: [{key: 'a b', operator: Exists}]}]"), "peers[0].node-selectors[0].match-expressions[0].key"},
		{"parseNodeSelector: invalid label value", peer(", node-selectors: [{match-labels: {rack: 'r 1'}}]"), "peers[0].node-selectors[0].match-labels.rack"},
		{"parseNodeSelector: invalid label value in an expression", peer(", node-selectors: [{match-expressions: [{key: k, operator: In, values: ['-a']}]}]"), "peers[0].node-selectors[0].match-expressions[0].values[0]"},
		{"parseBFDProfile: missing name", "bfd-profiles:\n- {receive-interval: 100}\n", "bfd-profiles[0].name"},
		{"parseBFDProfile: transmit-interval outside 10-60000", "bfd-profiles:\n- {name: a, transmit-interval: 60001}\n", "bfd-profiles[0].transmit-interval"},
		{"parseBFDProfile: detect-multiplier outside 2-255", "bfd-profiles:\n- {name: a, detect-multiplier: 256}\n", "bfd-profiles[0].detect-multiplier"},
		{"parseBFDProfile: echo-interval outside 10-60000", "bfd-profiles:\n- {name: a, echo-interval: 5}\n", "bfd-profiles[0].echo-interval"},
		{"parseBFDProfile: minimum-ttl outside 1-254", "bfd-profiles:\n- {name: a, minimum-ttl: 255}\n", "bfd-profiles[0].minimum-ttl"},
		{"parseCIDR: invalid start IP of a range", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.x-10.0.0.9]}\n", "address-pools[0].addresses[0]"},
		{"parseCIDR: invalid end IP of a range", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.1-10.0.0.x]}\n", "address-pools[0].addresses[0]"},
		{"parseBGPAdvertisements: aggregation-length-v6 over 128", bgpPool("'fd00::/64'", "{aggregation-length-v6: 129}"), "address-pools[0].bgp-advertisements[0].aggregation-length-v6"},
		{"parseBGPAdvertisements: aggregation-length-v6 shorter than a prefix of the pool", bgpPool("'fd00::/64'", "{aggregation-length-v6: 63}"), "address-pools[0].bgp-advertisements[0].aggregation-length-v6"},
		{"parseBGPAdvertisements: localpref not a number", bgpPool("10.0.0.0/24", "{localpref: high}"), "address-pools[0].bgp-advertisements[0].localpref"},

		{"accepted: hold-time 0 (no keepalives)", peer(", hold-time: 0s"), ""},
		{"accepted: a prefixed label key", peer(", node-selectors: [{match-labels: {'kubernetes.io/hostname': node-1}}]"), ""},
		{"accepted: host bits in a CIDR", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.0.0.5/24]}\n", ""},
		{"accepted: advertisements that differ only in a key left to its default", bgpPool("10.0.0.0/24", "{}\n  - {aggregation-length: 32}"), ""},
		{"accepted: a community alias and its value, written as two entries", "bgp-communities: {a: '1:2'}\n" + bgpPool("10.0.0.0/24", "{communities: [a, '1:2']}"), ""},
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
			if err == nil {
				t.Fatal("accepted what MetalLB 0.12.1 refuses")
			}
			requireErrorAt(t, err, tt.path)
		})
	}
}

// TestEchoModeWarning: echo mode is accepted, kept in the model, and said once, located.
func TestEchoModeWarning(t *testing.T) {
	cfg, err := Parse([]byte("bfd-profiles:\n- name: a\n- name: b\n  echo-mode: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.BFDProfiles[1].EchoMode {
		t.Error("EchoMode not kept as written")
	}
	want := []Warning{{Path: "bfd-profiles[1].echo-mode", Line: 4, Value: "true"}}
	if diff := cmp.Diff(want, cfg.Warnings, cmpopts.IgnoreFields(Warning{}, "Msg")); diff != "" {
		t.Fatalf("warnings (-want +got):\n%s", diff)
	}
	s := cfg.Warnings[0].String()
	if !strings.HasPrefix(s, `bfd-profiles[1].echo-mode (line 4): `) || !strings.Contains(s, "asynchronous") || !strings.HasSuffix(s, `: "true"`) {
		t.Errorf("warning %q", s)
	}
	if cfg, err := Parse([]byte("bfd-profiles:\n- {name: a, echo-mode: false}\n")); err != nil || len(cfg.Warnings) != 0 {
		t.Errorf("echo-mode false: %v, warnings %v", err, cfg.Warnings)
	}
}
