package ipam

import (
	"fmt"
	"testing"
)

// BenchmarkAssign100k makes 100,000 allocations into a fresh allocator per iteration and
// reports the cost of one (ns/alloc, allocs/alloc, B/alloc). The /16 holds only 65,534
// addresses, so it runs with churn: past 60,000 held, each new allocation first releases
// the oldest, as Services come and go.
func BenchmarkAssign100k(b *testing.B) {
	const n = 100_000
	for _, bc := range []struct{ name, pools string }{
		{"ipv6-64", "address-pools:\n- {name: p, protocol: layer2, addresses: ['fd00:1:2:3::/64']}\n"},
		{"ipv4-16", "address-pools:\n- {name: p, protocol: layer2, addresses: [10.20.0.0/16]}\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pools := mustPools(b, bc.pools)
			fam := IPv6
			if bc.name == "ipv4-16" {
				fam = IPv4
			}
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprintf("ns/svc-%d", i)
			}
			b.ReportAllocs()
			for b.Loop() {
				a := New(pools)
				for i := range n {
					if i >= 60_000 && fam == IPv4 {
						a.Release(names[i-60_000])
					}
					if _, err := a.Assign(Request{Service: names[i], Families: []Family{fam}}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/alloc")
		})
	}
}

// BenchmarkAssignWith100kInUse measures one allocation and its release when 100,000
// addresses of a /64 are already held.
func BenchmarkAssignWith100kInUse(b *testing.B) {
	a := New(mustPools(b, "address-pools:\n- {name: p, protocol: layer2, addresses: ['fd00:1:2:3::/64']}\n"))
	for i := range 100_000 {
		if _, err := a.Assign(Request{Service: fmt.Sprintf("ns/held-%d", i), Families: []Family{IPv6}}); err != nil {
			b.Fatal(err)
		}
	}
	// Punch holes so that the free space is fragmented.
	for i := 0; i < 100_000; i += 7 {
		a.Release(fmt.Sprintf("ns/held-%d", i))
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Assign(Request{Service: "ns/probe", Families: []Family{IPv6}}); err != nil {
			b.Fatal(err)
		}
		a.Release("ns/probe")
	}
}
