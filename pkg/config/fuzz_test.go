package config

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts survives a trip
// through Marshal unchanged.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		metallbSample,
		"",
		"address-pools:\n- name: p\n  protocol: layer2\n  addresses: [10.0.0.0/24, 'fc00::1-fc00::9']\n",
		"peers: [{peer-address: 10.0.0.1, peer-asn: 1, my-asn: 2, hold-time: 0s}]\n",
		"a: &x [1]\nb: *x\n",
		"address-pools:\n- name: '123'\n  protocol: bgp\n  addresses: [10.0.0.0/8]\n  bgp-advertisements: [{aggregation-length: 8}]\n",
		"bgp-communities: {'': '1:1', 'true': '2:2'}\n",
		"bfd-profiles: [{name: a, echo-mode: true, echo-interval: 50}]\n",
		"bgp-communities: {a: '1:2'}\naddress-pools:\n- {name: p, protocol: bgp, addresses: [10.0.0.0/24], bgp-advertisements: [{communities: [a, '1:2']}, {aggregation-length: 32, communities: ['1:2']}]}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		cfg, err := Parse(text)
		if err != nil {
			if cfg != nil {
				t.Fatalf("Parse returned a config with its error %v", err)
			}
			return
		}
		out, err := Marshal(cfg)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(c)) failed: %v\n%s", err, out)
		}
		// Warnings point at lines of the text, which Marshal lays out anew.
		if diff := cmp.Diff(cfg, again, cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Addr{}), cmpopts.IgnoreFields(Warning{}, "Line")); diff != "" {
			t.Fatalf("Parse(Marshal(c)) != c (-first +second):\n%s\n%s", diff, out)
		}
	})
}
