package ipam

import (
	"errors"
	"math/big"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/transport"
)

func mustPools(t testing.TB, text string) []config.Pool {
	t.Helper()
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg.Pools
}

const twoPools = `
address-pools:
- name: default
  protocol: layer2
  addresses: [192.168.10.90-192.168.10.92, "fc00::10-fc00::11"]
- name: manual
  protocol: layer2
  auto-assign: false
  addresses: [10.0.0.0/30]
- name: spill
  protocol: layer2
  addresses: [192.168.20.1/32]
`

var addrCmp = cmpopts.EquateComparable(netip.Addr{})

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func v4(svc string) Request { return Request{Service: svc, Families: []Family{IPv4}} }

func TestAssign(t *testing.T) {
	type step struct {
		req     Request
		release bool
		want    Assignment
		reason  Reason // want this failure
	}
	tcp := func(p uint16) []Port { return []Port{{transport.TCP, p}} }
	tests := []struct {
		name  string
		steps []step
	}{
		{"lowest first, pools in order", []step{
			{req: v4("a"), want: Assignment{"default", ips("192.168.10.90")}},
			{req: v4("b"), want: Assignment{"default", ips("192.168.10.91")}},
			{req: v4("c"), want: Assignment{"default", ips("192.168.10.92")}},
			{req: v4("d"), want: Assignment{"spill", ips("192.168.20.1")}},
			{req: v4("e"), reason: PoolExhausted},
			{req: v4("b"), release: true},
			{req: v4("e"), want: Assignment{"default", ips("192.168.10.91")}},
		}},
		{"idempotent", []step{
			{req: v4("a"), want: Assignment{"default", ips("192.168.10.90")}},
			{req: v4("a"), want: Assignment{"default", ips("192.168.10.90")}},
			{req: v4("b"), want: Assignment{"default", ips("192.168.10.91")}},
		}},
		{"pool by name, even without auto-assign", []step{
			{req: Request{Service: "a", Families: []Family{IPv4}, Pool: "manual"}, want: Assignment{"manual", ips("10.0.0.0")}},
			{req: Request{Service: "b", Families: []Family{IPv4}, Pool: "nope"}, reason: UnknownPool},
		}},
		{"dual-stack from one pool", []step{
			{req: Request{Service: "a", Families: []Family{IPv6, IPv4}}, want: Assignment{"default", ips("fc00::10", "192.168.10.90")}},
			{req: Request{Service: "b", Families: []Family{IPv4, IPv6}}, want: Assignment{"default", ips("192.168.10.91", "fc00::11")}},
			// default has no IPv6 left and spill has none at all.
			{req: Request{Service: "c", Families: []Family{IPv4, IPv6}}, reason: PoolExhausted},
			{req: Request{Service: "c", Families: []Family{IPv4, IPv4}}, reason: InvalidRequest},
		}},
		{"requested address", []step{
			{req: Request{Service: "a", Families: []Family{IPv4}, IPs: ips("192.168.10.92")}, want: Assignment{"default", ips("192.168.10.92")}},
			{req: Request{Service: "b", Families: []Family{IPv4}, IPs: ips("192.168.10.92")}, reason: IPUnavailable},
			{req: Request{Service: "b", Families: []Family{IPv4}, IPs: ips("10.0.0.3")}, want: Assignment{"manual", ips("10.0.0.3")}},
			{req: Request{Service: "c", Families: []Family{IPv4}, IPs: ips("172.16.0.1")}, reason: IPUnavailable},
			{req: Request{Service: "c", Families: []Family{IPv4}, IPs: ips("fc00::10")}, reason: InvalidRequest},
			{req: Request{Service: "c", Families: []Family{IPv4}, Pool: "spill", IPs: ips("192.168.10.90")}, reason: IPUnavailable},
			{req: v4("d"), want: Assignment{"default", ips("192.168.10.90")}},
		}},
		{"changing the request moves the address", []step{
			{req: v4("a"), want: Assignment{"default", ips("192.168.10.90")}},
			{req: Request{Service: "a", Families: []Family{IPv4}, IPs: ips("192.168.10.92")}, want: Assignment{"default", ips("192.168.10.92")}},
			{req: v4("b"), want: Assignment{"default", ips("192.168.10.90")}},
		}},
		{"a request that cannot be met keeps the old address", []step{
			{req: v4("a"), want: Assignment{"default", ips("192.168.10.90")}},
			{req: v4("b"), want: Assignment{"default", ips("192.168.10.91")}},
			{req: Request{Service: "a", Families: []Family{IPv4}, IPs: ips("192.168.10.91")}, reason: IPUnavailable},
			{req: v4("a"), want: Assignment{"default", ips("192.168.10.90")}},
			{req: v4("c"), want: Assignment{"default", ips("192.168.10.92")}},
		}},
		{"sharing", []step{
			{req: Request{Service: "a", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(80)}, want: Assignment{"default", ips("192.168.10.90")}},
			{req: Request{Service: "b", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(443)}, want: Assignment{"default", ips("192.168.10.90")}},
			// Same port: gets its own address.
			{req: Request{Service: "c", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(80)}, want: Assignment{"default", ips("192.168.10.91")}},
			// Asked for the shared address with a clashing port.
			{req: Request{Service: "d", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(443), IPs: ips("192.168.10.90")}, reason: SharingConflict},
			// Other key.
			{req: Request{Service: "d", Families: []Family{IPv4}, SharingKey: "other", IPs: ips("192.168.10.90")}, reason: IPUnavailable},
			// Local with a selector may not join Cluster services.
			{req: Request{Service: "d", Families: []Family{IPv4}, SharingKey: "k", BackendKey: "app=x", Ports: tcp(8080), IPs: ips("192.168.10.90")}, reason: SharingConflict},
			{req: v4("a"), release: true},
			{req: v4("b"), release: true},
			// The address is free again once its last holder leaves.
			{req: v4("e"), want: Assignment{"default", ips("192.168.10.90")}},
		}},
		{"local services share with the same selector", []step{
			{req: Request{Service: "a", Families: []Family{IPv4}, SharingKey: "k", BackendKey: "app=x", Ports: tcp(80)}, want: Assignment{"default", ips("192.168.10.90")}},
			{req: Request{Service: "b", Families: []Family{IPv4}, SharingKey: "k", BackendKey: "app=x", Ports: tcp(81)}, want: Assignment{"default", ips("192.168.10.90")}},
			{req: Request{Service: "c", Families: []Family{IPv4}, SharingKey: "k", BackendKey: "app=y", Ports: tcp(82)}, want: Assignment{"default", ips("192.168.10.91")}},
		}},
		{"changing ports into a clash loses the shared address", []step{
			{req: Request{Service: "a", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(80)}, want: Assignment{"default", ips("192.168.10.90")}},
			{req: Request{Service: "b", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(81), IPs: ips("192.168.10.90")}, want: Assignment{"default", ips("192.168.10.90")}},
			{req: Request{Service: "b", Families: []Family{IPv4}, SharingKey: "k", Ports: tcp(80), IPs: ips("192.168.10.90")}, reason: SharingConflict},
			{req: Request{Service: "c", Families: []Family{IPv4}, IPs: ips("192.168.10.91")}, want: Assignment{"default", ips("192.168.10.91")}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(mustPools(t, twoPools))
			for i, s := range tt.steps {
				if s.release {
					a.Release(s.req.Service)
					continue
				}
				got, err := a.Assign(s.req)
				if s.reason != 0 {
					var e *Error
					if !errors.As(err, &e) || e.Reason != s.reason {
						t.Fatalf("step %d: Assign(%+v) = %v, %v; want reason %v", i, s.req, got, err, s.reason)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: Assign(%+v): %v", i, s.req, err)
				}
				if diff := cmp.Diff(s.want, got, addrCmp); diff != "" {
					t.Fatalf("step %d: Assign(%+v) (-want +got):\n%s", i, s.req, diff)
				}
			}
			checkInvariants(t, a)
		})
	}
}

func TestAvoidBuggyIPs(t *testing.T) {
	a := New(mustPools(t, "address-pools:\n- {name: p, protocol: layer2, avoid-buggy-ips: true, addresses: [10.0.0.254-10.0.1.1]}\n"))
	var got []netip.Addr
	for _, s := range []string{"a", "b", "c"} {
		as, err := a.Assign(v4(s))
		if err != nil {
			if s == "c" {
				break
			}
			t.Fatalf("Assign %s: %v", s, err)
		}
		got = append(got, as.IPs...)
	}
	if diff := cmp.Diff(ips("10.0.0.254", "10.0.1.1"), got, addrCmp); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if _, err := a.Assign(Request{Service: "x", Families: []Family{IPv4}, IPs: ips("10.0.0.255")}); err == nil {
		t.Error("a requested .255 address was given out from an avoid-buggy-ips pool")
	}
	if c := a.Stats()[0].Capacity.Int64(); c != 2 {
		t.Errorf("capacity = %d, want 2", c)
	}
}

func TestRestore(t *testing.T) {
	a := New(mustPools(t, twoPools))
	// What a restarted controller reads back, including from a pool without auto-assign.
	if _, err := a.Restore(v4("a"), ips("192.168.10.91")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restore(v4("m"), ips("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	// A second Service claiming the same address in its status is refused.
	if _, err := a.Restore(v4("b"), ips("192.168.10.91")); err == nil {
		t.Fatal("two Services restored onto one unshared address")
	}
	if _, err := a.Restore(v4("c"), ips("172.16.0.1")); err == nil {
		t.Fatal("an address outside every pool was restored")
	}
	// Restored Services keep their addresses on the next Assign.
	for svc, want := range map[string]string{"a": "192.168.10.91", "m": "10.0.0.2"} {
		got, err := a.Assign(v4(svc))
		if err != nil || got.IPs[0] != netip.MustParseAddr(want) {
			t.Errorf("Assign(%s) = %v, %v; want %s kept", svc, got, err, want)
		}
	}
	got, _ := a.Assign(v4("b"))
	if diff := cmp.Diff(ips("192.168.10.90"), got.IPs, addrCmp); diff != "" {
		t.Errorf("new address (-want +got):\n%s", diff)
	}
	checkInvariants(t, a)
}

func TestSetPools(t *testing.T) {
	a := New(mustPools(t, twoPools))
	if _, err := a.Assign(v4("a")); err != nil { // 192.168.10.90
		t.Fatal(err)
	}
	shrunk := mustPools(t, "address-pools:\n- {name: default, protocol: layer2, addresses: [192.168.10.91-192.168.10.92]}\n")
	if err := a.SetPools(shrunk); err == nil {
		t.Fatal("SetPools took away an address in use")
	}
	if got, _ := a.Assigned("a"); got.IPs[0] != netip.MustParseAddr("192.168.10.90") {
		t.Fatalf("refused SetPools changed the assignment to %v", got)
	}
	// Renaming and growing keeps what is held, and turning auto-assign off moves nothing.
	grown := mustPools(t, "address-pools:\n- {name: renamed, protocol: layer2, auto-assign: false, addresses: [192.168.10.0/24]}\n- {name: other, protocol: layer2, addresses: [10.9.0.0/24]}\n")
	if err := a.SetPools(grown); err != nil {
		t.Fatal(err)
	}
	got, err := a.Assign(v4("a"))
	if err != nil || got.Pool != "renamed" || got.IPs[0] != netip.MustParseAddr("192.168.10.90") {
		t.Fatalf("after SetPools, Assign(a) = %v, %v; want 192.168.10.90 kept in pool renamed", got, err)
	}
	if got, _ := a.Assign(v4("b")); got.IPs[0] != netip.MustParseAddr("10.9.0.0") {
		t.Errorf("after SetPools, new address %v; want 10.9.0.0", got)
	}
	checkInvariants(t, a)
}

func TestLargePools(t *testing.T) {
	a := New(mustPools(t, "address-pools:\n- {name: huge, protocol: layer2, addresses: ['fc00::/8', 10.0.0.0/8]}\n"))
	st := a.Stats()
	want4, want6 := new(big.Int).Lsh(big.NewInt(1), 24), new(big.Int).Lsh(big.NewInt(1), 120)
	if st[0].Capacity.Cmp(want4) != 0 || st[1].Capacity.Cmp(want6) != 0 {
		t.Errorf("capacities %v and %v; want 2^24 and 2^120", st[0].Capacity, st[1].Capacity)
	}
	got, err := a.Assign(Request{Service: "a", Families: []Family{IPv6, IPv4}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ips("fc00::", "10.0.0.0"), got.IPs, addrCmp); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := a.Assign(Request{Service: "b", Families: []Family{IPv6}, IPs: ips("fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}); err != nil {
		t.Errorf("last address of fc00::/8: %v", err)
	}
}
