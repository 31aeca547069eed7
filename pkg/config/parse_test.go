package config

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// metallbSample is a MetalLB 0.12 ConfigMap using every key of the format.
const metallbSample = `
peers:
- peer-address: 10.0.0.1
  peer-asn: 64500
  my-asn: 64501
  peer-port: 1179
  hold-time: 9s
  keepalive-time: 3s
  router-id: 10.0.0.2
  source-address: 10.0.0.2
  password: secret
  ebgp-multihop: true
  bfd-profile: fast
  node-selectors:
  - match-labels: {rack: r1}
    match-expressions: [{key: k, operator: In, values: [a]}]
- peer-address: fc00::1
  peer-asn: 64500
  my-asn: 64500
bgp-communities:
  no-export: 65535:65281
bfd-profiles:
- name: fast
  receive-interval: 100
  transmit-interval: 100
  detect-multiplier: 3
  echo-interval: 50
  echo-mode: false
  passive-mode: false
  minimum-ttl: 254
address-pools:
- name: default
  protocol: layer2
  addresses:
  - 192.168.10.90-192.168.10.100
  - 192.168.20.0/28
  - fc00:f853:ccd:e799::/124
  auto-assign: true
  avoid-buggy-ips: false
- name: routed
  protocol: bgp
  auto-assign: false
  avoid-buggy-ips: true
  addresses: [198.51.100.0/24, "2001:db8::/64"]
  bgp-advertisements:
  - aggregation-length: 32
    aggregation-length-v6: 128
    localpref: 100
    communities: [no-export, 64512:100, 65535:65281]
  - aggregation-length: 24
    aggregation-length-v6: 64
    large-communities: ["64512:1:2"]
`

func TestParseMetalLBSample(t *testing.T) {
	cfg, err := Parse([]byte(metallbSample))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Config{
		Communities: map[string]Community{"no-export": 65535<<16 | 65281},
		BFDProfiles: []BFDProfile{{Name: "fast", ReceiveInterval: 100, TransmitInterval: 100, DetectMultiplier: 3, EchoInterval: 50, MinimumTTL: 254}},
		Peers: []Peer{
			{
				Address: netip.MustParseAddr("10.0.0.1"), ASN: 64500, MyASN: 64501, Port: 1179,
				HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second,
				RouterID: netip.MustParseAddr("10.0.0.2"), SourceAddress: netip.MustParseAddr("10.0.0.2"),
				Password: "secret", EBGPMultiHop: true, BFDProfile: "fast",
				NodeSelectors: []NodeSelector{{
					MatchLabels:      map[string]string{"rack": "r1"},
					MatchExpressions: []Requirement{{Key: "k", Operator: "In", Values: []string{"a"}}},
				}},
			},
			{Address: netip.MustParseAddr("fc00::1"), ASN: 64500, MyASN: 64500, Port: 179, HoldTime: 90 * time.Second, KeepaliveTime: 30 * time.Second},
		},
		Pools: []Pool{
			{
				Name: "default", Protocol: Layer2, AutoAssign: true, Forward: true,
				Addresses: []AddressRange{
					rng("192.168.10.90", "192.168.10.100"),
					rng("192.168.20.0", "192.168.20.15"),
					rng("fc00:f853:ccd:e799::", "fc00:f853:ccd:e799::f"),
				},
			},
			{
				Name: "routed", Protocol: BGP, AvoidBuggyIPs: true, Forward: true,
				Addresses: []AddressRange{rng("198.51.100.0", "198.51.100.255"), rng("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff")},
				Advertisements: []Advertisement{
					{AggregationLength: 32, AggregationLengthV6: 128, LocalPref: 100, Communities: []Community{64512<<16 | 100, 65535<<16 | 65281}},
					{AggregationLength: 24, AggregationLengthV6: 64, LargeCommunities: []LargeCommunity{{64512, 1, 2}}},
				},
			},
		},
	}
	if diff := cmp.Diff(want, cfg, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func rng(a, b string) AddressRange {
	return AddressRange{First: netip.MustParseAddr(a), Last: netip.MustParseAddr(b)}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse([]byte("address-pools:\n- name: b\n  protocol: bgp\n  addresses: [10.0.0.0/30]\npeers:\n- {peer-address: 10.1.0.1, peer-asn: 1, my-asn: 2}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools[0]
	if !p.AutoAssign || p.AvoidBuggyIPs {
		t.Errorf("auto-assign, avoid-buggy-ips = %v, %v; want true, false", p.AutoAssign, p.AvoidBuggyIPs)
	}
	if diff := cmp.Diff([]Advertisement{{AggregationLength: 32, AggregationLengthV6: 128}}, p.Advertisements); diff != "" {
		t.Errorf("default advertisement (-want +got):\n%s", diff)
	}
	peer := cfg.Peers[0]
	if peer.Port != 179 || peer.HoldTime != 90*time.Second || peer.KeepaliveTime != 30*time.Second {
		t.Errorf("peer defaults: port %d hold %s keepalive %s; want 179 1m30s 30s", peer.Port, peer.HoldTime, peer.KeepaliveTime)
	}
}

func TestParseForwarding(t *testing.T) {
	pools := "address-pools:\n" +
		"- {name: a, protocol: layer2, addresses: [10.0.0.0/30]}\n" +
		"- {name: b, protocol: layer2, addresses: [10.0.1.0/30], forwarding: ipvs}\n" +
		"- {name: c, protocol: layer2, addresses: [10.0.2.0/30], forwarding: none}\n" +
		"- {name: d, protocol: layer2, addresses: [10.0.3.0/30], forwarding: endpoints}\n"
	for _, tt := range []struct {
		top  string
		want []string // a, b, c, d
	}{
		{"", []string{"ipvs", "ipvs", "none", "endpoints"}},
		{"forwarding: ipvs\n", []string{"ipvs", "ipvs", "none", "endpoints"}},
		{"forwarding: none\n", []string{"none", "ipvs", "none", "endpoints"}},
		{"forwarding: endpoints\n", []string{"endpoints", "ipvs", "none", "endpoints"}},
	} {
		cfg, err := Parse([]byte(tt.top + pools))
		if err != nil {
			t.Fatalf("%q: %v", tt.top, err)
		}
		var got []string
		for _, p := range cfg.Pools {
			got = append(got, p.Forwarding())
			// Every pool that forwards, endpoints ones included, counts as forwarding
			// wherever Forward is asked (election, ipMode, the no-forwarder warning).
			if p.Forward != (p.Forwarding() != ForwardingNone) || p.ToEndpoints != (p.Forwarding() == ForwardingEndpoints) {
				t.Errorf("top %q: pool %s Forward %v ToEndpoints %v", tt.top, p.Name, p.Forward, p.ToEndpoints)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("top %q: pools forward %v, want %v", tt.top, got, tt.want)
		}
		back, err := Parse(mustMarshal(t, cfg))
		if err != nil || !slices.EqualFunc(back.Pools, cfg.Pools, func(a, b Pool) bool { return a.Forwarding() == b.Forwarding() }) {
			t.Errorf("top %q: Marshal does not round-trip forwarding: %v", tt.top, err)
		}
	}
}

func TestParseRelayLocal(t *testing.T) {
	pools := "address-pools:\n" +
		"- {name: a, protocol: layer2, addresses: [10.0.0.0/30]}\n" +
		"- {name: b, protocol: layer2, addresses: [10.0.1.0/30], forwarding: ipvs}\n" +
		"- {name: c, protocol: bgp, addresses: [10.0.2.0/30]}\n" +
		"- {name: d, protocol: layer2, addresses: [10.0.3.0/30], forwarding: none, relay-local: false}\n" +
		"- {name: e, protocol: layer2, addresses: [10.0.4.0/30], forwarding: none, relay-local: true}\n"
	for _, tt := range []struct {
		top  string
		want []bool // a..e
		warn bool   // the top-level key applies to no pool
	}{
		{"", []bool{false, false, false, false, true}, false},
		{"relay-local: true\n", []bool{false, false, false, false, true}, false},
		{"forwarding: none\nrelay-local: true\n", []bool{true, false, false, false, true}, false},
		{"forwarding: none\n", []bool{false, false, false, false, true}, false},
	} {
		cfg, err := Parse([]byte(tt.top + pools))
		if err != nil {
			t.Fatalf("%q: %v", tt.top, err)
		}
		var got []bool
		for _, p := range cfg.Pools {
			got = append(got, p.RelayLocal)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("top %q: pools relay %v, want %v", tt.top, got, tt.want)
		}
		back, err := Parse(mustMarshal(t, cfg))
		if err != nil || !slices.EqualFunc(back.Pools, cfg.Pools, func(a, b Pool) bool { return a.RelayLocal == b.RelayLocal }) {
			t.Errorf("top %q: Marshal does not round-trip relay-local: %v", tt.top, err)
		}
	}
	// The top-level key where no pool can use it is a mistake worth a word, not silence.
	cfg, err := Parse([]byte("relay-local: true\naddress-pools:\n- {name: a, protocol: layer2, addresses: [10.0.0.0/30]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || cfg.Warnings[0].Path != "relay-local" || cfg.Pools[0].RelayLocal {
		t.Errorf("warnings %+v, pool relays %v; want one warning at relay-local and no relay", cfg.Warnings, cfg.Pools[0].RelayLocal)
	}
}

func mustMarshal(t *testing.T, c *Config) []byte {
	t.Helper()
	b, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseEmpty(t *testing.T) {
	for _, text := range []string{"", "\n", "# nothing\n", "{}"} {
		cfg, err := Parse([]byte(text))
		if err != nil || len(cfg.Pools) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want an empty config", text, cfg, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	pool := func(extra string) string {
		return "address-pools:\n- name: p\n  protocol: layer2\n  addresses: [10.0.0.0/24]\n" + extra
	}
	tests := []struct {
		name, text string
		path, line string // want the first error to name this path, and this "(line N)"
		value      string // and quote this value ("" for none)
	}{
		{"unknown top key", "adress-pools: []\n", "adress-pools", "line 1", ""},
		{"unknown pool key", pool("  auto-asign: false\n"), "address-pools[0].auto-asign", "line 5", ""},
		{"not a list", "address-pools: {name: x}\n", "address-pools", "line 1", ""},
		{"bad bool", pool("  auto-assign: yes\n"), "address-pools[0].auto-assign", "line 5", "yes"},
		{"bad yaml", "address-pools: [\n", "", "", ""},
		{"no name", "address-pools:\n- protocol: layer2\n  addresses: [10.0.0.1/32]\n", "address-pools[0].name", "line 2", ""},
		{"dup name", pool("- name: p\n  protocol: layer2\n  addresses: [10.1.0.0/24]\n"), "address-pools[1].name", "line 5", "p"},
		{"no protocol", "address-pools:\n- name: p\n  addresses: [10.0.0.1/32]\n", "address-pools[0].protocol", "", ""},
		{"bad protocol", "address-pools:\n- name: p\n  protocol: ospf\n  addresses: [10.0.0.1/32]\n", "address-pools[0].protocol", "line 3", "ospf"},
		{"no addresses", "address-pools:\n- name: p\n  protocol: layer2\n", "address-pools[0].addresses", "", ""},
		{"bad cidr", "address-pools:\n- name: p\n  protocol: layer2\n  addresses: [10.0.0.0/33]\n", "address-pools[0].addresses[0]", "line 4", "10.0.0.0/33"},
		{"backwards range", "address-pools:\n- name: p\n  protocol: layer2\n  addresses: [10.0.0.9-10.0.0.1]\n", "address-pools[0].addresses[0]", "line 4", "10.0.0.9-10.0.0.1"},
		{"mixed range", "address-pools:\n- name: p\n  protocol: layer2\n  addresses: [10.0.0.1-fc00::1]\n", "address-pools[0].addresses[0]", "", "10.0.0.1-fc00::1"},
		{"zone", "address-pools:\n- name: p\n  protocol: layer2\n  addresses: [fe80::1%eth0-fe80::2]\n", "address-pools[0].addresses[0]", "", "fe80::1%eth0-fe80::2"},
		{"overlap within", "address-pools:\n- name: p\n  protocol: layer2\n  addresses:\n  - 10.0.0.0/24\n  - 10.0.0.200-10.0.1.5\n", "address-pools[0].addresses[1]", "line 6", "10.0.0.200-10.0.1.5"},
		{"overlap across", pool("- name: q\n  protocol: layer2\n  addresses: [10.0.0.128/25]\n"), "address-pools[1].addresses[0]", "line 7", "10.0.0.128/25"},
		{"l2 with adverts", pool("  bgp-advertisements: [{localpref: 1}]\n"), "address-pools[0].bgp-advertisements", "line 5", ""},
		{"bad community", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - communities: [70000:1]\n", "address-pools[0].bgp-advertisements[0].communities[0]", "line 6", "70000:1"},
		{"unknown alias", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - communities: [no-such]\n", "address-pools[0].bgp-advertisements[0].communities[0]", "", "no-such"},
		{"bad alias", "bgp-communities: {x: '1:2:3'}\n", "bgp-communities.x", "line 1", "1:2:3"},
		{"aggregation shorter than pool", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - aggregation-length: 16\n", "address-pools[0].bgp-advertisements[0].aggregation-length", "line 6", "16"},
		{"aggregation too long", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - aggregation-length: 33\n", "address-pools[0].bgp-advertisements[0].aggregation-length", "", "33"},
		{"aggregation v6 shorter than range", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: ['fc00::/64']\n  bgp-advertisements:\n  - aggregation-length-v6: 48\n", "address-pools[0].bgp-advertisements[0].aggregation-length-v6", "", "48"},
		{"localpref not a number", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - localpref: high\n", "address-pools[0].bgp-advertisements[0].localpref", "line 6", "high"},
		{"zero asn", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 0, my-asn: 1}\n", "peers[0].peer-asn", "line 2", ""},
		{"missing asn", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 5}\n", "peers[0].my-asn", "", ""},
		{"asn too big", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 4294967296, my-asn: 1}\n", "peers[0].peer-asn", "", "4294967296"},
		{"bad peer address", "peers:\n- {peer-address: 10.0.0.256, peer-asn: 1, my-asn: 1}\n", "peers[0].peer-address", "", "10.0.0.256"},
		{"short hold", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 1, my-asn: 1, hold-time: 2s}\n", "peers[0].hold-time", "", "2s"},
		{"bad duration", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 1, my-asn: 1, hold-time: soon}\n", "peers[0].hold-time", "", "soon"},
		{"keepalive over hold", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 1, my-asn: 1, hold-time: 9s, keepalive-time: 10s}\n", "peers[0].keepalive-time", "", "10s"},
		{"v6 router id", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 1, my-asn: 1, router-id: 'fc00::1'}\n", "peers[0].router-id", "", "fc00::1"},
		{"bad operator", "peers:\n- peer-address: 10.0.0.1\n  peer-asn: 1\n  my-asn: 1\n  node-selectors:\n  - match-expressions: [{key: a, operator: Gt, values: ['1']}]\n", "peers[0].node-selectors[0].match-expressions[0].operator", "line 6", "Gt"},
		{"unknown bfd profile", "peers:\n- {peer-address: 10.0.0.1, peer-asn: 1, my-asn: 1, bfd-profile: slow}\n", "peers[0].bfd-profile", "", "slow"},
		{"bfd out of range", "bfd-profiles:\n- {name: a, detect-multiplier: 1}\n", "bfd-profiles[0].detect-multiplier", "", "1"},
		{"duplicate advertisement", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - {localpref: 1}\n  - {localpref: 1}\n", "address-pools[0].bgp-advertisements[1]", "line 7", ""},
		{"duplicate community", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - communities: ['1:2', '1:2']\n", "address-pools[0].bgp-advertisements[0].communities[1]", "line 6", "1:2"},
		{"duplicate large community", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  bgp-advertisements:\n  - large-communities: ['1:2:3', '1:2:3']\n", "address-pools[0].bgp-advertisements[0].large-communities[1]", "line 6", "1:2:3"},
		{"bad forwarding", "forwarding: kube-proxy\n", "forwarding", "line 1", "kube-proxy"},
		{"bad pool forwarding", pool("  forwarding: yes\n"), "address-pools[0].forwarding", "line 5", "yes"},
		{"forwarding misspelt", "forwarding: endpoint\n", "forwarding", "line 1", "endpoint"},
		{"pool forwarding in capitals", pool("  forwarding: Endpoints\n"), "address-pools[0].forwarding", "line 5", "Endpoints"},
		{"duplicate key", "address-pools: []\naddress-pools: []\n", "address-pools", "line 2", ""},
		{"relay-local on a bgp pool", "address-pools:\n- name: p\n  protocol: bgp\n  addresses: [10.0.0.0/24]\n  relay-local: true\n", "address-pools[0].relay-local", "line 5", "true"},
		{"relay-local on a pool that forwards", pool("  forwarding: ipvs\n  relay-local: true\n"), "address-pools[0].relay-local", "line 6", "true"},
		{"relay-local not a bool", pool("  relay-local: sometimes\n"), "address-pools[0].relay-local", "line 5", "sometimes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.text))
			if err == nil {
				t.Fatal("Parse succeeded; want an error")
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FieldError", err)
			}
			if fe.Path != tt.path {
				t.Errorf("path = %q, want %q (error: %v)", fe.Path, tt.path, err)
			}
			msg := fe.Error()
			if tt.line != "" && !strings.Contains(msg, "("+tt.line+")") {
				t.Errorf("error %q does not say %q", msg, tt.line)
			}
			if tt.value != "" && !strings.Contains(msg, `"`+tt.value+`"`) {
				t.Errorf("error %q does not quote the value %q", msg, tt.value)
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	_, err := Parse([]byte("address-pools:\n- name: a\n  protocol: nope\n  addresses: [x]\n- protocol: layer2\n  addresses: [10.0.0.1/32]\n"))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v is not Errors", err)
	}
	var paths []string
	for _, e := range errs {
		paths = append(paths, e.Path)
	}
	want := []string{"address-pools[0].protocol", "address-pools[0].addresses[0]", "address-pools[1].name"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("error paths (-want +got):\n%s", diff)
	}
}

func TestAliasBomb(t *testing.T) {
	// Nine levels of nine-fold aliases expand to 9^9 strings; the parser must stop early.
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= 9; i++ {
		prev := "*a" + string(rune('0'+i-1))
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [" + strings.Repeat(prev+", ", 8) + prev + "]\n")
	}
	b.WriteString("address-pools:\n- name: p\n  protocol: layer2\n  addresses: *a9\n")
	if _, err := Parse([]byte(b.String())); err == nil {
		t.Fatal("Parse of an alias bomb succeeded")
	}
}

func TestRangePrefixes(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		str  string
	}{
		{"192.168.10.90-192.168.10.100", []string{"192.168.10.90/31", "192.168.10.92/30", "192.168.10.96/30", "192.168.10.100/32"}, "192.168.10.90-192.168.10.100"},
		{"10.0.0.5/24", []string{"10.0.0.0/24"}, "10.0.0.0/24"},
		{"10.0.0.0-10.0.0.255", []string{"10.0.0.0/24"}, "10.0.0.0/24"},
		{"0.0.0.0/0", []string{"0.0.0.0/0"}, "0.0.0.0/0"},
		{"::/0", []string{"::/0"}, "::/0"},
		{"fc00::1 - fc00::1", []string{"fc00::1/128"}, "fc00::1/128"},
		{"255.255.255.254-255.255.255.255", []string{"255.255.255.254/31"}, "255.255.255.254/31"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := ParseRange(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range r.Prefixes() {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Prefixes (-want +got):\n%s", diff)
			}
			if s := r.String(); s != tt.str {
				t.Errorf("String() = %q, want %q", s, tt.str)
			}
		})
	}
}

func TestNodeSelector(t *testing.T) {
	p := Peer{NodeSelectors: []NodeSelector{
		{MatchLabels: map[string]string{"rack": "r1"}},
		{MatchExpressions: []Requirement{{Key: "zone", Operator: "In", Values: []string{"a", "b"}}, {Key: "edge", Operator: "DoesNotExist"}}},
	}}
	tests := []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"rack": "r1"}, true},
		{map[string]string{"rack": "r2"}, false},
		{map[string]string{"zone": "b"}, true},
		{map[string]string{"zone": "b", "edge": ""}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := p.SelectsNode(tt.labels); got != tt.want {
			t.Errorf("SelectsNode(%v) = %v, want %v", tt.labels, got, tt.want)
		}
	}
	if !(&Peer{}).SelectsNode(nil) {
		t.Error("a peer without node-selectors must select every node")
	}
}
