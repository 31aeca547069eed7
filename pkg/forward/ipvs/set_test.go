package ipvs_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/forward/forwardtest"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/transport"
)

var pools = []netip.Prefix{netip.MustParsePrefix("192.168.10.0/24"), netip.MustParsePrefix("fd10::/64")}

func owns(a netip.Addr) bool {
	return slices.ContainsFunc(pools, func(p netip.Prefix) bool { return p.Contains(a) })
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func rs(a string, port uint16, w int) forward.RealServer {
	return forward.RealServer{Addr: addr(a), Port: port, Weight: w}
}

func key(vip string, port uint16, p transport.Protocol) forward.Key {
	return forward.Key{VIP: addr(vip), Port: port, Proto: p}
}

// linux opens the real kernel of this (the VM's) network namespace.
func linux(t testing.TB) *ipvs.Linux {
	t.Helper()
	netlab.RequireVM(t)
	k, err := ipvs.OpenLinux()
	if err != nil {
		t.Fatalf("no IPVS in the VM: %v", err)
	}
	t.Cleanup(k.Close)
	return k
}

// newForwarder returns a forwarder over k of the addresses owned says are Herald's,
// emptied when the test ends.
func newForwarder(t testing.TB, k ipvs.Kernel, owned func(netip.Addr) bool) *ipvs.Forwarder {
	t.Helper()
	return newForwarderReg(t, k, owned, nil)
}

func newForwarderReg(t testing.TB, k ipvs.Kernel, owned func(netip.Addr) bool, reg prometheus.Registerer) *ipvs.Forwarder {
	t.Helper()
	f, err := ipvs.New(k, ipvs.Options{Owns: owned, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Set(nil) })
	return f
}

func TestSet(t *testing.T)     { testSet(t, forwardtest.New()) }
func TestSetInVM(t *testing.T) { testSet(t, linux(t)) }

// testSet is the forwarder's reconciliation, one table for the fake and the real kernel:
// leftovers removed and a foreign service left alone, services and real servers added,
// changed and removed, IPv6, state deleted behind Herald's back restored after Resync
// and counted, and refusals that change nothing.
func testSet(t *testing.T, k ipvs.Kernel) {
	// What was there before: kube-proxy's ClusterIP service, and what an earlier Herald
	// run left: a service and its address on herald0, and one of a pool deleted from the
	// configuration since (no pool holds it, but it is on herald0, so it is Herald's).
	kp := ipvs.VirtualService{Key: key("10.96.0.1", 443, transport.TCP), Scheduler: "rr"}
	for _, v := range []ipvs.VirtualService{kp, {Key: key("192.168.10.99", 80, transport.TCP), Scheduler: "rr"}, {Key: key("172.30.0.1", 80, transport.TCP), Scheduler: "rr"}} {
		if err := k.AddService(v); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = k.DelService(kp.Key) }) // the next test in this VM starts clean
	if err := k.EnsureLink(); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.168.10.99", "172.30.0.1"} {
		if err := k.AddAddr(addr(a)); err != nil {
			t.Fatal(err)
		}
	}

	reg := prometheus.NewRegistry()
	f := newForwarderReg(t, k, owns, reg)
	web := forward.Service{VIP: addr("192.168.10.90"), Port: 8090, Proto: transport.TCP, Masquerade: true,
		RealServers: []forward.RealServer{rs("192.168.10.11", 30080, 1), rs("192.168.10.12", 30080, 1)}}
	dns := forward.Service{VIP: addr("192.168.10.91"), Port: 53, Proto: transport.UDP, Scheduler: "sh", Persistence: 3 * time.Hour,
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, RealServers: []forward.RealServer{rs("192.168.10.11", 30053, 1)}}
	v6 := forward.Service{VIP: addr("fd10::90"), Port: 8090, Proto: transport.TCP, RealServers: []forward.RealServer{rs("fd10::11", 30080, 1)}}
	check := func(step string, wantIPVS, wantAddrs []string) {
		t.Helper()
		got, err := forwardtest.Dump(k)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, wantIPVS) {
			t.Errorf("%s: IPVS holds\n  %s\nwant\n  %s", step, strings.Join(got, "\n  "), strings.Join(wantIPVS, "\n  "))
		}
		as, err := k.LinkAddrs()
		if err != nil {
			t.Fatal(err)
		}
		var gotAddrs []string
		for _, a := range as {
			gotAddrs = append(gotAddrs, a.String())
		}
		slices.Sort(gotAddrs)
		if !slices.Equal(gotAddrs, wantAddrs) {
			t.Errorf("%s: %s holds %v, want %v", step, ipvs.LinkName, gotAddrs, wantAddrs)
		}
	}
	kpLine := "10.96.0.1:443/TCP rr -> "
	for i := range 2 { // the second time changes nothing
		if err := f.Set([]forward.Service{web, dns, v6}); err != nil {
			t.Fatalf("Set #%d: %v", i+1, err)
		}
		check("first Set", []string{
			kpLine,
			"192.168.10.90:8090/TCP rr -> 192.168.10.11:30080*|,192.168.10.12:30080*|",
			"192.168.10.91:53/UDP sh persistent 3h0m0s -> 192.168.10.11:30053*|",
			"[fd10::90]:8090/TCP rr -> [fd10::11]:30080*|",
		}, []string{"192.168.10.90", "192.168.10.91", "fd10::90"})
	}
	// A node goes, another comes with weight 3, the scheduler changes; dns goes.
	web.Scheduler = "wrr"
	web.RealServers = []forward.RealServer{rs("192.168.10.12", 30080, 1), rs("192.168.10.13", 30080, 3)}
	if err := f.Set([]forward.Service{web}); err != nil {
		t.Fatal(err)
	}
	want := []string{kpLine, "192.168.10.90:8090/TCP wrr -> 192.168.10.12:30080*|,192.168.10.13:30080*|||"}
	check("changed", want, []string{"192.168.10.90"})
	// Someone deletes Herald's state behind its back (kube-proxy in IPVS mode may): the
	// next full reconciliation puts it back, and counts what it restored.
	if err := k.DelService(web.Key()); err != nil {
		t.Fatal(err)
	}
	if err := k.DelAddr(web.VIP); err != nil {
		t.Fatal(err)
	}
	f.Resync()
	if err := f.Set([]forward.Service{web}); err != nil {
		t.Fatal(err)
	}
	check("virtual service restored after Resync", want, []string{"192.168.10.90"})
	if err := k.DelDestination(web.Key(), ipvs.Destination{Addr: web.RealServers[0].Addr, Port: web.RealServers[0].Port}); err != nil {
		t.Fatal(err)
	}
	f.Resync()
	if err := f.Set([]forward.Service{web}); err != nil {
		t.Fatal(err)
	}
	check("real server restored after Resync", want, []string{"192.168.10.90"})
	for _, kind := range []string{"virtual_service", "real_server"} {
		if got := metric(t, reg, "herald_forward_restored_total", kind); got != 1 {
			t.Errorf(`herald_forward_restored_total{kind=%q} = %v, want 1`, kind, got)
		}
	}
	if err := f.Set(nil); err != nil {
		t.Fatal(err)
	}
	check("emptied", []string{kpLine}, nil)
	if has, err := k.HasTables(); err != nil || has {
		t.Errorf("Herald's nftables tables left after emptying: %v, %v", has, err)
	}

	if err := f.Set([]forward.Service{{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP, Scheduler: "fastest"}}); err == nil || !strings.Contains(err.Error(), `unknown IPVS scheduler "fastest"`) {
		t.Errorf("unknown scheduler: %v", err)
	}
	if err := f.Set([]forward.Service{{VIP: addr("10.96.0.1"), Port: 443, Proto: transport.TCP}}); err == nil || !strings.Contains(err.Error(), "10.96.0.1 is in no pool") {
		t.Errorf("an address outside the pools: %v", err)
	}
	check("after refusals", []string{kpLine}, nil)
}

// metric returns the value of the counter or gauge name (with one label of value label,
// or none when label is "") in reg.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// With nothing to forward and nothing of Herald's in the kernel, Set only reads: no
// herald0, no table, no sysctl (a node whose pools all say forwarding: none).
func TestSetNothingTouchesNothing(t *testing.T) {
	k := forwardtest.New()
	f := newForwarder(t, k, owns)
	for range 3 {
		if err := f.Set(nil); err != nil {
			t.Fatal(err)
		}
		f.Resync()
	}
	if k.Writes() != 0 || k.Link() {
		t.Errorf("%d writes to the kernel, link %v; want none", k.Writes(), k.Link())
	}
}

// The tables follow the services (source ranges, masquerade, ARP silence, refusal) and
// are rebuilt only when what they hold changes.
func TestSetTables(t *testing.T) {
	k := forwardtest.New()
	f := newForwarder(t, k, owns)
	web := forward.Service{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP, Masquerade: true,
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.9.1.2/16"), netip.MustParsePrefix("fd00::/8")},
		RealServers:  []forward.RealServer{rs("10.244.1.5", 8080, 1)}}
	local := forward.Service{VIP: addr("fd10::5"), Port: 80, Proto: transport.TCP, RealServers: []forward.RealServer{rs("fd44::1", 8080, 1)}}
	if err := f.Set([]forward.Service{web, local}); err != nil {
		t.Fatal(err)
	}
	got, ok := k.Tables()
	want := ipvs.Tables{
		Silence:    []netip.Addr{addr("192.168.10.90")},
		Sources:    []ipvs.SourceRule{{Key: web.Key(), Allowed: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}}},
		Masquerade: []netip.Addr{addr("192.168.10.90")},
	}
	if !ok || !got.Equal(want) {
		t.Fatalf("tables %+v, want %+v", got, want)
	}
	writes := k.Writes()
	local.RealServers = append(local.RealServers, rs("fd44::2", 8080, 1))
	if err := f.Set([]forward.Service{web, local}); err != nil {
		t.Fatal(err)
	}
	if w := k.Writes() - writes; w != 1 { // the one real server, nothing else
		t.Errorf("%d writes for one added real server, want 1", w)
	}
}

// A virtual service with no real server (a Service with no ready endpoint on a live
// node) refuses its traffic at once; it stays in IPVS, so the first real server to come
// back takes the traffic as soon as the refusal goes.
func TestSetRefusesWithoutRealServers(t *testing.T) {
	k := forwardtest.New()
	f := newForwarder(t, k, owns)
	web := forward.Service{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP, Masquerade: true,
		RealServers: []forward.RealServer{rs("10.244.1.5", 8080, 1)}}
	dns := forward.Service{VIP: addr("fd10::53"), Port: 53, Proto: transport.UDP}
	dnsTCP := forward.Service{VIP: addr("fd10::53"), Port: 53, Proto: transport.TCP}
	if err := f.Set([]forward.Service{web, dns, dnsTCP}); err != nil {
		t.Fatal(err)
	}
	tables := func() []forward.Key {
		t.Helper()
		got, ok := k.Tables()
		if !ok {
			t.Fatal("no tables")
		}
		return got.Reject
	}
	if diff := cmp.Diff([]forward.Key{dnsTCP.Key(), dns.Key()}, tables(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("refused (-want +got):\n%s", diff)
	}
	if dump, _ := forwardtest.Dump(k); len(dump) != 3 {
		t.Errorf("IPVS holds %v; want the refused services too", dump)
	}
	// The web Service loses its last endpoint; the DNS one gains one.
	web.RealServers, dns.RealServers = nil, []forward.RealServer{rs("fd44::5", 5353, 1)}
	if err := f.Set([]forward.Service{web, dns, dnsTCP}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]forward.Key{web.Key(), dnsTCP.Key()}, tables(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("refused (-want +got):\n%s", diff)
	}
	writes := k.Writes()
	if err := f.Set([]forward.Service{web, dns, dnsTCP}); err != nil || k.Writes() != writes {
		t.Errorf("the same set again: %v, %d writes", err, k.Writes()-writes)
	}
	// Gone from the plan: no refusal left behind.
	if err := f.Set([]forward.Service{dns}); err != nil {
		t.Fatal(err)
	}
	if got, ok := k.Tables(); ok && len(got.Reject) != 0 {
		t.Errorf("refusals of services no longer wanted: %v", got.Reject)
	}
}

// A kernel without the dummy link type cannot forward: Set says so with ErrUnsupported.
func TestSetWithoutDummyLink(t *testing.T) {
	k := forwardtest.New()
	k.NoDummy = true
	f := newForwarder(t, k, owns)
	err := f.Set([]forward.Service{{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP}})
	if !errors.Is(err, ipvs.ErrUnsupported) {
		t.Errorf("Set without a dummy link: %v, want ErrUnsupported", err)
	}
}

// A failure leaves the forwarder to compare with the kernel in full next time, which
// repairs what the failure left half done.
func TestSetRecoversAfterFailure(t *testing.T) {
	k := forwardtest.New()
	f := newForwarder(t, k, owns)
	web := forward.Service{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP, RealServers: []forward.RealServer{rs("10.0.0.1", 30080, 1), rs("10.0.0.2", 30080, 1)}}
	k.FailNext("AddDestination", errors.New("netlink: no buffer space"))
	if err := f.Set([]forward.Service{web}); err == nil {
		t.Fatal("a failed real server went unreported")
	}
	if err := f.Set([]forward.Service{web}); err != nil {
		t.Fatal(err)
	}
	got, _ := forwardtest.Dump(k)
	if want := []string{"192.168.10.90:80/TCP rr -> 10.0.0.1:30080*|,10.0.0.2:30080*|"}; !slices.Equal(got, want) {
		t.Errorf("after the retry IPVS holds %v, want %v", got, want)
	}
}

// Probe never passes for a kernel without IPVS: on this machine's kernel it says why;
// in the VM, whose kernel has ip_vs, it passes.
func TestProbe(t *testing.T) {
	err := ipvs.Probe()
	if err != nil && !errors.Is(err, ipvs.ErrUnsupported) {
		t.Errorf("Probe error %v does not wrap ErrUnsupported", err)
	}
	t.Logf("forwarding on this kernel: %v", err)
}

func TestProbeInVM(t *testing.T) {
	netlab.RequireVM(t)
	if err := ipvs.Probe(); err != nil {
		t.Errorf("Probe in the VM: %v", err)
	}
}
