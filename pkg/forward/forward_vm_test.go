package forward

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"

	"github.com/heraldlb/herald/e2e/netlab"
)

var pools = []netip.Prefix{netip.MustParsePrefix("192.168.10.0/24"), netip.MustParsePrefix("fd10::/64")}

func owns(a netip.Addr) bool {
	return slices.ContainsFunc(pools, func(p netip.Prefix) bool { return p.Contains(a) })
}

// kernel reads back what IPVS holds: "vip:port/proto sched [persistent T] -> rs:port*w, …".
func kernel(t *testing.T, h *ipvs.Handle) []string {
	t.Helper()
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range svcs {
		a, _ := netip.AddrFromSlice(s.Address)
		line := netip.AddrPortFrom(a.Unmap(), s.Port).String() + "/" + Proto(s.Protocol).String() + " " + s.SchedName
		if s.Flags&persistentFlag != 0 {
			line += " persistent " + (time.Duration(s.Timeout) * time.Second).String()
		}
		dests, _ := h.GetDestinations(s)
		var ds []string
		for _, d := range dests {
			da, _ := netip.AddrFromSlice(d.Address)
			ds = append(ds, netip.AddrPortFrom(da.Unmap(), d.Port).String()+"*"+strings.Repeat("|", d.Weight))
		}
		slices.Sort(ds)
		out = append(out, line+" -> "+strings.Join(ds, ","))
	}
	slices.Sort(out)
	return out
}

func linkAddrs(t *testing.T) []string {
	t.Helper()
	l, err := netlink.LinkByName(LinkName)
	if err != nil {
		return nil
	}
	as, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
	var out []string
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out = append(out, ip.Unmap().String())
		}
	}
	slices.Sort(out)
	return out
}

func rs(addr string, port uint16, w int) RealServer {
	return RealServer{Addr: netip.MustParseAddr(addr), Port: port, Weight: w}
}

func TestSetInVM(t *testing.T) {
	netlab.RequireVM(t)
	h, err := ipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// What was there before: kube-proxy's ClusterIP service, and what an earlier Herald
	// run left: a service and its address on herald0.
	kp := &ipvs.Service{Address: net.ParseIP("10.96.0.1"), Protocol: syscall.IPPROTO_TCP, Port: 443, SchedName: "rr", AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	old := &ipvs.Service{Address: net.ParseIP("192.168.10.99"), Protocol: syscall.IPPROTO_TCP, Port: 80, SchedName: "rr", AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	// An address of a pool deleted from the configuration since: no pool holds it, but
	// it is on herald0, so it is Herald's to remove.
	gone := &ipvs.Service{Address: net.ParseIP("172.30.0.1"), Protocol: syscall.IPPROTO_TCP, Port: 80, SchedName: "rr", AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	for _, s := range []*ipvs.Service{kp, old, gone} {
		if err := h.NewService(s); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = h.DelService(kp) }) // the next test in this VM starts clean
	_ = netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: LinkName}})
	l, _ := netlink.LinkByName(LinkName)
	_ = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.168.10.99"), Mask: net.CIDRMask(32, 32)}})
	_ = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("172.30.0.1"), Mask: net.CIDRMask(32, 32)}})

	reg := prometheus.NewRegistry()
	f, err := New(Options{Owns: owns, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	web := Service{VIP: netip.MustParseAddr("192.168.10.90"), Port: 8090, Proto: TCP, RealServers: []RealServer{rs("192.168.10.11", 30080, 1), rs("192.168.10.12", 30080, 1)}}
	dns := Service{VIP: netip.MustParseAddr("192.168.10.91"), Port: 53, Proto: UDP, Scheduler: "sh", Persistence: 3 * time.Hour, RealServers: []RealServer{rs("192.168.10.11", 30053, 1)}}
	v6 := Service{VIP: netip.MustParseAddr("fd10::90"), Port: 8090, Proto: TCP, RealServers: []RealServer{rs("fd10::11", 30080, 1)}}
	check := func(step string, wantIPVS, wantAddrs []string) {
		t.Helper()
		if got := kernel(t, h); !slices.Equal(got, wantIPVS) {
			t.Errorf("%s: IPVS holds\n  %s\nwant\n  %s", step, strings.Join(got, "\n  "), strings.Join(wantIPVS, "\n  "))
		}
		if got := linkAddrs(t); !slices.Equal(got, wantAddrs) {
			t.Errorf("%s: %s holds %v, want %v", step, LinkName, got, wantAddrs)
		}
	}
	kpLine := "10.96.0.1:443/TCP rr -> "
	for i := range 2 { // the second time changes nothing
		if err := f.Set([]Service{web, dns, v6}); err != nil {
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
	web.RealServers = []RealServer{rs("192.168.10.12", 30080, 1), rs("192.168.10.13", 30080, 3)}
	if err := f.Set([]Service{web}); err != nil {
		t.Fatal(err)
	}
	check("changed", []string{kpLine, "192.168.10.90:8090/TCP wrr -> 192.168.10.12:30080*|,192.168.10.13:30080*|||"}, []string{"192.168.10.90"})
	// Someone deletes Herald's state behind its back (kube-proxy in IPVS mode may): the
	// next full reconciliation puts it back, and counts what it restored.
	want := []string{kpLine, "192.168.10.90:8090/TCP wrr -> 192.168.10.12:30080*|,192.168.10.13:30080*|||"}
	if err := h.DelService(ipvsService(web)); err != nil {
		t.Fatal(err)
	}
	l, _ = netlink.LinkByName(LinkName)
	if err := netlink.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.168.10.90"), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	f.Resync()
	if err := f.Set([]Service{web}); err != nil {
		t.Fatal(err)
	}
	check("virtual service restored after Resync", want, []string{"192.168.10.90"})
	if err := h.DelDestination(ipvsService(web), destination(web.RealServers[0])); err != nil {
		t.Fatal(err)
	}
	f.Resync()
	if err := f.Set([]Service{web}); err != nil {
		t.Fatal(err)
	}
	check("real server restored after Resync", want, []string{"192.168.10.90"})
	for kind, n := range map[string]float64{"virtual_service": 1, "real_server": 1} {
		if got := testutil.ToFloat64(f.metrics.Restored.WithLabelValues(kind)); got != n {
			t.Errorf("herald_forward_restored_total{kind=%q} = %v, want %v", kind, got, n)
		}
	}
	if got := testutil.ToFloat64(f.metrics.RealServers); got != 2 {
		t.Errorf("herald_forward_real_servers = %v, want 2", got)
	}
	if err := f.Set(nil); err != nil {
		t.Fatal(err)
	}
	check("emptied", []string{kpLine}, nil)

	if err := f.Set([]Service{{VIP: netip.MustParseAddr("192.168.10.90"), Port: 80, Proto: TCP, Scheduler: "fastest"}}); err == nil || !strings.Contains(err.Error(), `unknown IPVS scheduler "fastest"`) {
		t.Errorf("unknown scheduler: %v", err)
	}
	if err := f.Set([]Service{{VIP: netip.MustParseAddr("10.96.0.1"), Port: 443, Proto: TCP}}); err == nil || !strings.Contains(err.Error(), "10.96.0.1 is in no pool") {
		t.Errorf("an address outside the pools: %v", err)
	}
	check("after refusals", []string{kpLine}, nil)
}
