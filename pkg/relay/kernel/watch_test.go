package kernel

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Which kernel changes wake the relay: only those that can concern its state, so that a
// busy node's route churn (a route per pod) does not.
func TestWatchWakesOnlyForItsState(t *testing.T) {
	r := &Relay{opts: Options{FirstTable: DefaultFirstTable, Tables: DefaultTables}}
	r.seen.set([]netip.Addr{netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("fd77::2")},
		[]netip.Addr{netip.MustParseAddr("10.77.0.50")}, map[int]string{2: "eth0"})
	route := func(typ uint16, table int, dst string) netlink.RouteUpdate {
		_, n, _ := net.ParseCIDR(dst)
		return netlink.RouteUpdate{Type: typ, Route: netlink.Route{Table: table, Dst: n}}
	}
	for _, tc := range []struct {
		name string
		u    netlink.RouteUpdate
		want bool
	}{
		{"a route of its tables deleted", route(unix.RTM_DELROUTE, DefaultFirstTable, "0.0.0.0/0"), true},
		{"the subnet towards a node gone", route(unix.RTM_DELROUTE, unix.RT_TABLE_MAIN, "10.77.0.0/24"), true},
		{"a route of another table deleted", route(unix.RTM_DELROUTE, 100, "10.77.0.0/24"), false},
		{"a pod's route deleted", route(unix.RTM_DELROUTE, unix.RT_TABLE_MAIN, "10.244.1.7/32"), false},
		{"a relayed address no longer local", route(unix.RTM_DELROUTE, unix.RT_TABLE_LOCAL, "10.77.0.50/32"), true},
		{"the subnet towards a node back", route(unix.RTM_NEWROUTE, unix.RT_TABLE_MAIN, "10.77.0.0/24"), true},
		{"the IPv6 subnet towards a node back", route(unix.RTM_NEWROUTE, unix.RT_TABLE_MAIN, "fd77::/64"), true},
		{"a pod's route", route(unix.RTM_NEWROUTE, unix.RT_TABLE_MAIN, "10.244.1.7/32"), false},
		{"a default route", func() netlink.RouteUpdate {
			u := route(unix.RTM_NEWROUTE, unix.RT_TABLE_MAIN, "0.0.0.0/0")
			u.Gw = net.ParseIP("10.77.0.254")
			return u
		}(), false},
		{"a relayed address made local", route(unix.RTM_NEWROUTE, unix.RT_TABLE_LOCAL, "10.77.0.50/32"), true},
		{"another local address", route(unix.RTM_NEWROUTE, unix.RT_TABLE_LOCAL, "10.77.0.1/32"), false},
	} {
		if got := r.affects(tc.u); got != tc.want {
			t.Errorf("%s: affects = %v, want %v", tc.name, got, tc.want)
		}
	}
	link := func(index int, name string) netlink.LinkUpdate {
		return netlink.LinkUpdate{Link: &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: index, Name: name}}}
	}
	if !r.renamed(link(2, "uplink")) || r.renamed(link(2, "eth0")) || r.renamed(link(9, "veth9")) {
		t.Error("renamed: want only the uplink under another name")
	}
}
