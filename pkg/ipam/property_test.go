package ipam

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldlb/herald/pkg/transport"
)

// The pools of the property tests are small enough to enumerate, so every invariant can be
// checked against brute force.
const propertyPools = `
address-pools:
- {name: a, protocol: layer2, avoid-buggy-ips: true, addresses: [10.0.0.254-10.0.1.3, "fc00::/126"]}
- {name: b, protocol: layer2, addresses: [10.0.2.0/30, 10.0.2.8/31]}
- {name: c, protocol: layer2, auto-assign: false, addresses: [10.0.3.0/31, "fc00::100/127"]}
`

type op struct {
	release bool
	req     Request
}

func randomOps(r *rand.Rand, n int) []op {
	var all []netip.Addr
	for _, s := range []string{"10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.2", "10.0.2.1", "10.0.2.9", "10.0.3.1", "fc00::2", "fc00::101", "192.0.2.1"} {
		all = append(all, netip.MustParseAddr(s))
	}
	ops := make([]op, n)
	for i := range ops {
		req := Request{Service: fmt.Sprintf("svc%d", r.IntN(12))}
		switch r.IntN(5) {
		case 0:
			req.Families = []Family{IPv6}
		case 1:
			req.Families = []Family{IPv4, IPv6}
		default:
			req.Families = []Family{IPv4}
		}
		if r.IntN(4) == 0 {
			req.Pool = []string{"a", "b", "c", "x"}[r.IntN(4)]
		}
		if r.IntN(4) == 0 {
			req.IPs = []netip.Addr{all[r.IntN(len(all))]}
		}
		if r.IntN(2) == 0 {
			req.SharingKey = []string{"k1", "k2"}[r.IntN(2)]
		}
		if r.IntN(3) == 0 {
			req.BackendKey = []string{"app=x", "app=y"}[r.IntN(2)]
		}
		for range r.IntN(3) {
			req.Ports = append(req.Ports, Port{transport.TCP, uint16(80 + r.IntN(3))})
		}
		ops[i] = op{release: r.IntN(5) == 0, req: req}
	}
	return ops
}

type outcome struct {
	IPs    []netip.Addr
	Reason Reason
}

func run(t *testing.T, a *Allocator, ops []op) []outcome {
	t.Helper()
	var out []outcome
	for i, o := range ops {
		if o.release {
			a.Release(o.req.Service)
			out = append(out, outcome{})
		} else {
			before, _ := a.Assigned(o.req.Service)
			wantFresh := expectedFresh(a, o.req)
			got, err := a.Assign(o.req)
			var oc outcome
			if e, ok := err.(*Error); ok {
				oc.Reason = e.Reason
			} else if err != nil {
				t.Fatalf("op %d: %v", i, err)
			}
			oc.IPs = got.IPs
			out = append(out, oc)
			// A Service that held nothing and asked for nothing in particular gets the
			// lowest free addresses of the first pool that has them all.
			if before.IPs == nil && wantFresh != nil && err == nil && !slices.Equal(wantFresh, got.IPs) {
				t.Fatalf("op %d: Assign(%+v) = %v; brute force says %v", i, o.req, got.IPs, wantFresh)
			}
		}
		checkInvariants(t, a)
	}
	return out
}

// expectedFresh computes by enumeration what a plain request (no sharing key, no requested
// address) must get; nil when the request is not plain.
func expectedFresh(a *Allocator, req Request) []netip.Addr {
	if req.SharingKey != "" || len(req.IPs) > 0 || req.Pool != "" {
		return nil
	}
	if _, held := a.holders[req.Service]; held {
		return nil
	}
	for _, p := range a.pools {
		if !p.autoAssign {
			continue
		}
		var got []netip.Addr
		for _, f := range req.Families {
			s := p.space[f]
			if s == nil {
				break
			}
		search:
			for _, r := range s.ranges {
				for ip := r.First; ; ip = ip.Next() {
					if a.used[ip] == nil && !(s.avoid && buggy(ip)) {
						got = append(got, ip)
						break search
					}
					if ip == r.Last {
						break
					}
				}
			}
		}
		if len(got) == len(req.Families) {
			return got
		}
	}
	return nil
}

// checkInvariants checks by enumeration that the allocator's state is consistent.
func checkInvariants(t *testing.T, a *Allocator) {
	t.Helper()
	for ip, u := range a.used {
		if !u.pool.contains(ip) {
			t.Fatalf("%s held in pool %q that does not contain it", ip, u.pool.name)
		}
		if u.pool.space[FamilyOf(ip)].isFree(ip) {
			t.Fatalf("%s is held and free at once", ip)
		}
		for i, h := range u.holders {
			for _, o := range u.holders[i+1:] {
				if h.sharingKey == "" || h.sharingKey != o.sharingKey || h.backendKey != o.backendKey {
					t.Fatalf("%s held by %s and %s, which may not share (keys %q/%q, backends %q/%q)", ip, h.service, o.service, h.sharingKey, o.sharingKey, h.backendKey, o.backendKey)
				}
				for _, p := range h.ports {
					if slices.Contains(o.ports, p) {
						t.Fatalf("%s: port %s used by both %s and %s", ip, p, h.service, o.service)
					}
				}
			}
		}
	}
	for svc, h := range a.holders {
		for _, ip := range h.ips {
			if !slices.ContainsFunc(a.used[ip].holders, func(x *holder) bool { return x.service == svc }) {
				t.Fatalf("%s holds %s, but the address does not list it", svc, ip)
			}
		}
	}
	for _, p := range a.pools {
		for f, s := range p.space {
			if s == nil {
				continue
			}
			free, held := 0, 0
			for _, r := range s.ranges {
				for ip := r.First; ; ip = ip.Next() {
					if s.isFree(ip) {
						free++
					}
					if a.used[ip] != nil {
						held++
					}
					if ip == r.Last {
						break
					}
				}
			}
			if held != s.inUse {
				t.Fatalf("pool %q %s: inUse %d, but %d addresses are held", p.name, Family(f), s.inUse, held)
			}
			total := 0
			for _, r := range s.ranges {
				for ip := r.First; ; ip = ip.Next() {
					total++
					if ip == r.Last {
						break
					}
				}
			}
			if free+held != total {
				t.Fatalf("pool %q %s: %d free + %d held != %d addresses", p.name, Family(f), free, held, total)
			}
			// Free intervals never touch: release merges them.
			var prev *interval
			s.free.Ascend(func(iv interval) bool {
				if prev != nil && prev.last.Next() == iv.first {
					t.Fatalf("pool %q: free intervals %v and %v were not merged", p.name, *prev, iv)
				}
				prev = &iv
				return true
			})
		}
	}
}

func TestPropertyInvariants(t *testing.T) {
	for seed := range uint64(60) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			ops := randomOps(rand.New(rand.NewPCG(seed, 1)), 300)
			a := New(mustPools(t, propertyPools))
			run(t, a, ops)
			// Releasing everything restores every pool to its first state.
			for svc := range a.holders {
				a.Release(svc)
			}
			fresh := New(mustPools(t, propertyPools))
			for i, p := range a.pools {
				for f, s := range p.space {
					if s == nil {
						continue
					}
					var got, want []interval
					s.free.Ascend(func(iv interval) bool { got = append(got, iv); return true })
					fresh.pools[i].space[f].free.Ascend(func(iv interval) bool { want = append(want, iv); return true })
					if !slices.Equal(got, want) || s.inUse != 0 {
						t.Fatalf("pool %q %s after releasing all: free %v, in use %d; want %v, 0", p.name, Family(f), got, s.inUse, want)
					}
				}
			}
		})
	}
}

func TestPropertyDeterministic(t *testing.T) {
	for seed := range uint64(20) {
		ops := randomOps(rand.New(rand.NewPCG(seed, 2)), 200)
		first := run(t, New(mustPools(t, propertyPools)), ops)
		second := run(t, New(mustPools(t, propertyPools)), ops)
		if diff := cmp.Diff(first, second, addrCmp); diff != "" {
			t.Fatalf("seed %d: the same requests gave different results (-first +second):\n%s", seed, diff)
		}
	}
}

func TestPropertyRestoreRebuildsState(t *testing.T) {
	// Restoring every assignment into a fresh allocator, as a restarted controller does,
	// must give the same state: the next request gets the same answer from both.
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 3))
		ops := randomOps(r, 200)
		a := New(mustPools(t, propertyPools))
		run(t, a, ops)
		b := New(mustPools(t, propertyPools))
		reqs := map[string]Request{}
		for _, o := range ops {
			reqs[o.req.Service] = o.req
		}
		for _, svc := range slices.Sorted(maps.Keys(a.holders)) {
			h := a.holders[svc]
			req := reqs[svc]
			req.SharingKey, req.BackendKey, req.Ports = h.sharingKey, h.backendKey, h.ports
			if _, err := b.Restore(req, h.ips); err != nil {
				t.Fatalf("seed %d: Restore(%s, %v): %v", seed, svc, h.ips, err)
			}
		}
		checkInvariants(t, b)
		next := randomOps(r, 50)
		if diff := cmp.Diff(run(t, a, next), run(t, b, next), addrCmp); diff != "" {
			t.Fatalf("seed %d: original and restored allocators diverge (-orig +restored):\n%s", seed, diff)
		}
	}
}
