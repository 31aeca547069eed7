package ipvs_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/transport"
)

// inNS runs f on a thread inside ns; sockets it opens stay there.
var inNS = netlab.InNamespace

func host(t testing.TB, n int) netns.NsHandle { return netlab.LinkedHost(t, n) }

// serve answers every connection to 10.N.0.2:30080 in ns with name.
func serve(t testing.TB, ns netns.NsHandle, n int, name string) {
	netlab.ServeName(t, ns, fmt.Sprintf("10.%d.0.2:30080", n), name)
}

// ask connects from the client namespace to addr and returns who answered.
func ask(t *testing.T, client netns.NsHandle, addr string) string {
	t.Helper()
	who, _, err := tryAsk(client, addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return who
}

var tryAsk = netlab.Ask

// Real traffic through IPVS on Debian's kernel: a client namespace connects to the VIP,
// this (root) namespace is the node, and two backend namespaces stand in for the
// Service's NodePorts on two nodes.
func TestTrafficInVM(t *testing.T) {
	netlab.RequireVM(t)
	client := host(t, 1)
	b2, b3 := host(t, 2), host(t, 3)
	serve(t, b2, 2, "backend-2")
	serve(t, b3, 3, "backend-3")
	f := newForwarder(t, linux(t), owns)
	svc := forward.Service{VIP: netip.MustParseAddr("192.168.10.90"), Port: 8090, Proto: transport.TCP,
		RealServers: []forward.RealServer{rs("10.2.0.2", 30080, 1), rs("10.3.0.2", 30080, 1)}}
	seen := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			got[ask(t, client, "192.168.10.90:8090")]++
		}
		return got
	}
	if err := f.Set([]forward.Service{svc}); err != nil {
		t.Fatal(err)
	}
	// Round robin: both backends answer, evenly.
	if got := seen(10); got["backend-2"] != 5 || got["backend-3"] != 5 {
		t.Errorf("rr over two backends, 10 connections: %v", got)
	}
	// A node leaves: its real server goes, and no connection reaches it.
	svc.RealServers = svc.RealServers[1:]
	if err := f.Set([]forward.Service{svc}); err != nil {
		t.Fatal(err)
	}
	if got := seen(6); got["backend-3"] != 6 {
		t.Errorf("after removing backend-2: %v", got)
	}
	// ClientIP affinity: one client keeps its backend.
	svc.RealServers = []forward.RealServer{rs("10.2.0.2", 30080, 1), rs("10.3.0.2", 30080, 1)}
	svc.Persistence = time.Minute
	if err := f.Set([]forward.Service{svc}); err != nil {
		t.Fatal(err)
	}
	if got := seen(8); len(got) != 1 {
		t.Errorf("with persistence one client reached %v", got)
	}
}

// Masquerade brings replies back through the node when the real server would not route
// them there; without it (Local) the backend sees the client's own address. Source ranges
// drop other clients before IPVS.
func TestMasqueradeAndSourceRangesInVM(t *testing.T) {
	netlab.RequireVM(t)
	client := host(t, 6)
	far := host(t, 7)  // its default route does not lead back through the node
	near := host(t, 8) // routes through the node, like a local endpoint
	if err := inNS(far, func() error {
		return netlink.RouteReplace(&netlink.Route{Gw: net.IPv4(10, 7, 0, 254)})
	}); err != nil {
		t.Fatal(err)
	}
	serve(t, far, 7, "far")
	serve(t, near, 8, "near")
	f := newForwarder(t, linux(t), owns)
	const vip = "192.168.10.97:8090"
	svc := forward.Service{VIP: netip.MustParseAddr("192.168.10.97"), Port: 8090, Proto: transport.TCP, RealServers: []forward.RealServer{rs("10.7.0.2", 30080, 1)}}
	if err := f.Set([]forward.Service{svc}); err != nil {
		t.Fatal(err)
	}
	if who, _, err := tryAsk(client, vip, time.Second); err == nil {
		t.Fatalf("control: %s answered without masquerade; the test would prove nothing", who)
	}
	svc.Masquerade = true
	if err := f.Set([]forward.Service{svc}); err != nil {
		t.Fatal(err)
	}
	who, saw, err := tryAsk(client, vip, 2*time.Second)
	if err != nil || who != "far" || saw != "10.7.0.1" {
		t.Fatalf("with masquerade: %q saw %q (%v); want far, seeing the node's 10.7.0.1", who, saw, err)
	}

	local := forward.Service{VIP: netip.MustParseAddr("192.168.10.98"), Port: 8090, Proto: transport.TCP, RealServers: []forward.RealServer{rs("10.8.0.2", 30080, 1)}}
	if err := f.Set([]forward.Service{svc, local}); err != nil {
		t.Fatal(err)
	}
	if who, saw, err := tryAsk(client, "192.168.10.98:8090", 2*time.Second); err != nil || who != "near" || saw != "10.6.0.2" {
		t.Errorf("without masquerade: %q saw %q (%v); want near, seeing the client's 10.6.0.2", who, saw, err)
	}

	svc.SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("10.6.0.3/32")}
	if err := f.Set([]forward.Service{svc, local}); err != nil {
		t.Fatal(err)
	}
	if who, _, err := tryAsk(client, vip, time.Second); err == nil {
		t.Errorf("a client outside loadBalancerSourceRanges reached %s", who)
	}
	if _, _, err := tryAsk(client, "192.168.10.98:8090", 2*time.Second); err != nil {
		t.Errorf("another service's source ranges blocked this one: %v", err)
	}
	svc.SourceRanges = append(svc.SourceRanges, netip.MustParsePrefix("10.6.0.0/24"))
	if err := f.Set([]forward.Service{svc, local}); err != nil {
		t.Fatal(err)
	}
	if who, _, err := tryAsk(client, vip, 2*time.Second); err != nil || who != "far" {
		t.Errorf("a client inside the source ranges: %q, %v", who, err)
	}
}
