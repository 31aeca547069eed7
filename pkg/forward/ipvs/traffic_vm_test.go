package ipvs_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
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

// forwarding: endpoints, on the real kernel: the real servers are pod addresses behind
// other nodes, reached through this node's routes and masqueraded so that the replies
// come back through it; a node that goes silent leaves; a Service left with no endpoint
// refuses its traffic at once, TCP and UDP, and takes it again when one comes back.
func TestEndpointsAndRefusalInVM(t *testing.T) {
	netlab.RequireVM(t)
	client := host(t, 11)
	pods := map[int]string{12: "10.244.12.5", 13: "10.244.13.5"}
	for n, pod := range pods {
		ns := host(t, n)
		// The pod address sits behind node n; node n's default route does not lead back
		// here, so only masquerade brings the replies back.
		if err := inNS(ns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(pod), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return err
			}
			return netlink.RouteReplace(&netlink.Route{Gw: net.IPv4(10, byte(n), 0, 254)})
		}); err != nil {
			t.Fatal(err)
		}
		_, podNet, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", n))
		route := &netlink.Route{Dst: podNet, Gw: net.IPv4(10, byte(n), 0, 2)}
		if err := netlink.RouteAdd(route); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netlink.RouteDel(route) })
		netlab.ServeName(t, ns, pod+":8080", fmt.Sprintf("pod-%d", n))
	}
	f := newForwarder(t, linux(t), owns)
	const vip = "192.168.10.93:80"
	web := forward.Service{VIP: netip.MustParseAddr("192.168.10.93"), Port: 80, Proto: transport.TCP, Masquerade: true,
		RealServers: []forward.RealServer{rs("10.244.12.5", 8080, 1), rs("10.244.13.5", 8080, 1)}}
	dns := forward.Service{VIP: netip.MustParseAddr("192.168.10.93"), Port: 53, Proto: transport.UDP, Masquerade: true}
	if err := f.Set([]forward.Service{web, dns}); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for range 4 {
		who, saw, err := tryAsk(client, vip, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got[who] = saw
	}
	if want := map[string]string{"pod-12": "10.12.0.1", "pod-13": "10.13.0.1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pods answered, seeing: %v; want %v", got, want)
	}

	// Node 13 goes silent: its pod leaves.
	web.RealServers = web.RealServers[:1]
	if err := f.Set([]forward.Service{web, dns}); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if who := ask(t, client, vip); who != "pod-12" {
			t.Errorf("with node 13 silent, %s answered", who)
		}
	}

	// No endpoint left: refused at once.
	web.RealServers = nil
	if err := f.Set([]forward.Service{web, dns}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, _, err := tryAsk(client, vip, 3*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
		t.Errorf("TCP to a Service without endpoints: %v after %s; want refused at once", err, time.Since(start))
	}
	if err := askUDP(client, "192.168.10.93:53"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a Service without endpoints: %v; want refused (ICMP port unreachable)", err)
	}
	if n := refuseRules(t); n != 2 {
		t.Errorf("%d rules refuse traffic, want 2 (TCP and UDP)", n)
	}

	// An endpoint comes back: the traffic flows again.
	web.RealServers = []forward.RealServer{rs("10.244.13.5", 8080, 1)}
	if err := f.Set([]forward.Service{web, dns}); err != nil {
		t.Fatal(err)
	}
	if who := ask(t, client, vip); who != "pod-13" {
		t.Errorf("after an endpoint came back: %s", who)
	}
	if n := refuseRules(t); n != 1 {
		t.Errorf("%d rules refuse traffic, want 1 (UDP)", n)
	}
}

// askUDP sends a datagram from ns to addr and returns the error of reading the answer.
func askUDP(ns netns.NsHandle, addr string) error {
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	_, err := c.Read(make([]byte, 16))
	return err
}

// refuseRules counts the rules of Herald's refuse chain.
func refuseRules(t *testing.T) int {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: "herald"}, &nftables.Chain{Name: "refuse"})
	if err != nil {
		t.Fatal(err)
	}
	return len(rules)
}
