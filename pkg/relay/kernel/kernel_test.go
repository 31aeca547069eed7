package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/transport"
)

// The test's network: a client and two nodes on one bridge, the Service's address
// answered (a static neighbour entry stands in for the announcer) by the owner. Each node
// runs what kube-proxy does for a Local Service: DNAT of the address to its own
// endpoint, here a server on the node's own address that says its name and the client
// address it saw.
var (
	vip    = netip.MustParseAddr("10.77.0.50")
	client = netip.MustParseAddr("10.77.0.100")
	nodeIP = map[string]netip.Addr{"owner": netip.MustParseAddr("10.77.0.1"), "other": netip.MustParseAddr("10.77.0.2")}

	vip6    = netip.MustParseAddr("fd77::50")
	client6 = netip.MustParseAddr("fd77::100")
	nodeIP6 = map[string]netip.Addr{"owner": netip.MustParseAddr("fd77::1"), "other": netip.MustParseAddr("fd77::2")}
)

type lab struct {
	client, owner, other *netlab.NS
	ns                   map[string]netns.NsHandle
}

func newLab(t *testing.T) *lab {
	netlab.Require(t)
	sw := netlab.NewNS(t, "rsw")
	sw.Bridge("br0")
	l := &lab{client: netlab.NewNS(t, "rcl"), owner: netlab.NewNS(t, "rown"), other: netlab.NewNS(t, "roth"), ns: map[string]netns.NsHandle{}}
	for i, n := range []*netlab.NS{l.client, l.owner, l.other} {
		netlab.Plug(t, sw, "br0", fmt.Sprintf("p%d", i), n, "eth0")
	}
	l.client.Addr("eth0", client.String()+"/24")
	l.client.Addr("eth0", client6.String()+"/64")
	l.client.Run("ip", "neigh", "replace", vip.String(), "lladdr", l.owner.MAC("eth0"), "dev", "eth0", "nud", "permanent")
	l.client.Run("ip", "-6", "neigh", "replace", vip6.String(), "lladdr", l.owner.MAC("eth0"), "dev", "eth0", "nud", "permanent")
	for name, n := range map[string]*netlab.NS{"owner": l.owner, "other": l.other} {
		n.Addr("eth0", nodeIP[name].String()+"/24")
		n.Addr("eth0", nodeIP6[name].String()+"/64")
		n.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
		n.Run("nft", fmt.Sprintf(`table inet kubeproxy {
			chain prerouting { type nat hook prerouting priority dstnat;
				ip daddr %[1]s tcp dport 80 dnat ip to %[2]s:8080; ip daddr %[1]s udp dport 53 dnat ip to %[2]s:5353;
				ip6 daddr %[3]s tcp dport 80 dnat ip6 to [%[4]s]:8080; ip6 daddr %[3]s udp dport 53 dnat ip6 to [%[4]s]:5353; }
		}`, vip, nodeIP[name], vip6, nodeIP6[name]))
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		l.ns[name] = h
		for _, a := range []netip.Addr{nodeIP[name], nodeIP6[name]} {
			netlab.ServeName(t, h, netip.AddrPortFrom(a, 8080).String(), name)
			serveNameUDP(t, h, netip.AddrPortFrom(a, 5353).String(), name)
		}
	}
	h, err := netns.GetFromName(l.client.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	l.ns["client"] = h
	return l
}

// serveNameUDP answers every datagram to addr in ns with "name source".
func serveNameUDP(t *testing.T, ns netns.NsHandle, addr, name string) {
	var c net.PacketConn
	if err := netlab.InNamespace(ns, func() (err error) { c, err = net.ListenPacket("udp", addr); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			src, _, _ := net.SplitHostPort(from.String())
			_, _ = c.WriteTo([]byte(name+" "+src), from)
		}
	}()
}

// ask sends one request to the address from the client's source port sport and returns
// who answered and the client address it saw.
func (l *lab) ask(vip, client netip.Addr, proto transport.Protocol, sport uint16) (who, saw string, err error) {
	network, port := "tcp", 80
	if proto == transport.UDP {
		network, port = "udp", 53
	}
	var c net.Conn
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: client.AsSlice(), Port: int(sport)}}
	if proto == transport.UDP {
		d.LocalAddr = &net.UDPAddr{IP: client.AsSlice(), Port: int(sport)}
	}
	if err := netlab.InNamespace(l.ns["client"], func() (err error) {
		c, err = d.Dial(network, netip.AddrPortFrom(vip, uint16(port)).String())
		return
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var line string
	if proto == transport.UDP {
		if _, err := c.Write([]byte("who")); err != nil {
			return "", "", err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return "", "", err
		}
		line = string(buf[:n])
	} else if line, err = bufio.NewReader(c).ReadString('\n'); err != nil {
		return "", "", err
	}
	who, saw, _ = strings.Cut(strings.TrimSpace(line), " ")
	return who, saw, nil
}

func (l *lab) relay(t *testing.T, opts Options) *Relay {
	t.Helper()
	var r *Relay
	if err := netlab.InNamespace(l.ns["owner"], func() (err error) { r, err = New(opts); return }); err != nil {
		t.Fatal(err)
	}
	return r
}

func (l *lab) set(r *Relay, routes []relay.Route) error {
	return netlab.InNamespace(l.ns["owner"], func() error { return r.Set(routes) })
}

// counter reads one field of a line of the namespace's /proc/net/snmp ("Icmp",
// "InRedirects"), or of /proc/net/snmp6 for group Icmp6.
func counter(t *testing.T, n *netlab.NS, group, field string) int {
	t.Helper()
	if group == "Icmp6" { // /proc/net/snmp6: one "Icmp6InRedirects value" per line
		for _, line := range strings.Split(n.Run("cat", "/proc/net/snmp6"), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == group+field {
				v, _ := strconv.Atoi(f[1])
				return v
			}
		}
		t.Fatalf("no %s%s in /proc/net/snmp6", group, field)
	}
	lines := strings.Split(n.Run("cat", "/proc/net/snmp"), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != group+":" || len(values) != len(names) {
			continue
		}
		for j, name := range names {
			if name == field {
				v, _ := strconv.Atoi(values[j])
				return v
			}
		}
	}
	t.Fatalf("no %s %s in /proc/net/snmp", group, field)
	return 0
}

// The flows a split hands on reach the other node's endpoint through its own DNAT, with
// the client's address; the rest stay with the owner's; no redirect reaches the client;
// and an empty set removes every trace.
func TestRelayAcrossRealLinks(t *testing.T) {
	t.Run("IPv4", func(t *testing.T) { testRelay(t, vip, client, nodeIP, "InRedirects", "Icmp") })
	t.Run("IPv6", func(t *testing.T) { testRelay(t, vip6, client6, nodeIP6, "InRedirects", "Icmp6") })
}

func testRelay(t *testing.T, vip, client netip.Addr, nodeIP map[string]netip.Addr, redirects, group string) {
	l := newLab(t)
	nodes := map[string]netip.Addr{"owner": nodeIP["owner"], "other": nodeIP["other"]}
	var routes []relay.Route
	for _, p := range []transport.Protocol{transport.TCP, transport.UDP} {
		port := uint16(80)
		if p == transport.UDP {
			port = 53
		}
		routes = append(routes, relay.Split(vip, p, port, "owner", nodes)...)
	}
	relay.Sort(routes)
	if len(routes) == 0 {
		t.Fatal("the split relays nothing")
	}
	want := func(p transport.Protocol, sport uint16) string {
		return relay.NodeOf(slices.DeleteFunc(slices.Clone(routes), func(r relay.Route) bool { return r.Proto != p }), sport, "owner")
	}
	stages := 0
	check := func(stage string, relayed bool) {
		t.Helper()
		start := time.Now()
		stages++
		seen := map[string]int{}
		for _, p := range []transport.Protocol{transport.TCP, transport.UDP} {
			for b := range relay.Buckets {
				from, _ := relay.BucketPorts(b)
				// A port inside the bucket, another at every stage: a 4-tuple just closed
				// waits out TIME_WAIT.
				sport := from + uint16(stages*40) + uint16(p)
				who, saw, err := l.ask(vip, client, p, sport)
				expect := "owner"
				if relayed {
					expect = want(p, sport)
				}
				if err != nil || who != expect || saw != client.String() {
					t.Errorf("%s: %s from source port %d: answered by %q seeing %q (%v); want %s seeing %s", stage, p, sport, who, saw, err, expect, client)
				}
				seen[who]++
			}
		}
		t.Logf("%s: answers per node %v in %s", stage, seen, time.Since(start).Round(time.Millisecond))
	}

	check("before", false)
	r := l.relay(t, Options{})
	t.Cleanup(func() { _ = l.set(r, nil) })
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	check("relayed", true)
	// The edges of every relayed range and the ports just outside them: the nftables
	// set's interval ends and the policy rules' source-port ranges agree to the port (a
	// port untracked without its rule would be routed back out, unanswered).
	edges := map[transport.Protocol]map[int]bool{}
	for _, rt := range routes {
		if edges[rt.Proto] == nil {
			edges[rt.Proto] = map[int]bool{}
		}
		for _, sport := range []int{int(rt.From) - 1, int(rt.From), int(rt.To), int(rt.To) + 1} {
			if sport >= relay.FirstPort && sport <= relay.LastPort {
				edges[rt.Proto][sport] = true
			}
		}
	}
	for p, ports := range edges {
		for _, sport := range slices.Sorted(maps.Keys(ports)) {
			who, saw, err := l.ask(vip, client, p, uint16(sport))
			if expect := want(p, uint16(sport)); err != nil || who != expect || saw != client.String() {
				t.Errorf("edges: %s from source port %d: answered by %q seeing %q (%v); want %s", p, sport, who, saw, err, expect)
			}
		}
	}
	// Other traffic skips the relay's rules: a gate before them, its landing after.
	ip := "-4"
	if vip.Is6() {
		ip = "-6"
	}
	rules := l.owner.Run("ip", ip, "rule", "list")
	for _, want := range []string{
		fmt.Sprintf("%d:\tnot from all iif eth0 goto %d", DefaultPriority-1, DefaultPriority+1),
		fmt.Sprintf("%d:\tnot from all to %s goto %d", DefaultPriority-1, vip, DefaultPriority+1),
		fmt.Sprintf("%d:\tfrom all nop", DefaultPriority+1),
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("no rule %q:\n%s", want, rules)
		}
	}
	if n := counter(t, l.client, group, redirects); n != 0 {
		t.Errorf("the client received %d ICMP redirects", n)
	}
	dropped := l.owner.Run("nft", "list", "chain", "inet", TableName, "output")
	t.Logf("the owner's redirect drops: %s", strings.Join(strings.Fields(dropped), " "))

	// Idempotent, and what someone else deleted comes back.
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	l.owner.Run("ip", ip, "rule", "del", "priority", strconv.Itoa(DefaultPriority))
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	check("restored", true)
	// The table deleted behind its back comes back on the next resync.
	l.owner.Run("nft", "delete", "table", "inet", TableName)
	r.Resync()
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	check("table restored", true)

	// A new process (a restarted speaker) finds and removes what the old one left.
	r2 := l.relay(t, Options{})
	if err := l.set(r2, nil); err != nil {
		t.Fatal(err)
	}
	for _, prio := range []int{DefaultPriority - 1, DefaultPriority, DefaultPriority + 1} {
		if out := l.owner.Run("ip", ip, "rule", "list", "priority", strconv.Itoa(prio)); strings.TrimSpace(out) != "" {
			t.Errorf("rules left:\n%s", out)
		}
	}
	if out := l.owner.Run("ip", ip, "route", "list", "table", "all"); strings.Contains(out, "table "+strconv.Itoa(DefaultFirstTable)) {
		t.Errorf("routes left:\n%s", out)
	}
	if out := l.owner.Run("nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("nftables table left:\n%s", out)
	}
	check("removed", false)
}

// Bounds are kept and named: more routes than MaxRules, more nodes than tables.
// leftOut checks that err says, as a *relay.Partial, that n routes were left out, and
// names each of want: a steady state to report, not a failure to retry.
func leftOut(t *testing.T, what string, err error, n int, want ...string) {
	t.Helper()
	var p *relay.Partial
	if !errors.As(err, &p) {
		t.Errorf("%s: %v, want a *relay.Partial", what, err)
		return
	}
	if p.Left != n {
		t.Errorf("%s: %d routes left out, want %d (%v)", what, p.Left, n, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: %v, want it to name %q", what, err, w)
		}
	}
}

func TestRelayBounds(t *testing.T) {
	l := newLab(t)
	routes := relay.Split(vip, transport.TCP, 80, "owner", map[string]netip.Addr{"owner": nodeIP["owner"], "other": nodeIP["other"]})
	r := l.relay(t, Options{MaxRules: 1})
	t.Cleanup(func() { _ = l.set(r, nil) })
	leftOut(t, "MaxRules 1", l.set(r, routes), len(routes)-1, "more than the 1 policy rules")
	if out := l.owner.Run("ip", "rule", "list", "priority", strconv.Itoa(DefaultPriority)); strings.Count(out, "\n") != 1 {
		t.Errorf("want exactly one rule:\n%s", out)
	}
	two := []relay.Route{routes[0], routes[0]}
	two[1].Port, two[1].Via, two[1].Node = 81, netip.MustParseAddr("10.77.0.3"), "third"
	r1 := l.relay(t, Options{Tables: 1})
	leftOut(t, "two nodes in one table", l.set(r1, two), 1, "all 1 routing tables")
	// A node that is not on a connected subnet cannot be routed to: that route is left
	// out everywhere (no rule, no untracked flows), named in the error; the others stay.
	r2 := l.relay(t, Options{})
	far := routes[0]
	far.Port, far.Via, far.Node = 82, netip.MustParseAddr("10.99.0.1"), "far"
	leftOut(t, "an unreachable node", l.set(r2, []relay.Route{routes[0], far}), 1, "10.99.0.1")
	if out := l.owner.Run("ip", "rule", "list", "priority", strconv.Itoa(DefaultPriority)); strings.Count(out, "\n") != 1 || strings.Contains(out, "dport 82") {
		t.Errorf("want only the reachable node's rule:\n%s", out)
	}
	if out := l.owner.Run("nft", "list", "table", "inet", TableName); strings.Contains(out, "tcp . 82 .") || !strings.Contains(out, "tcp . 80 .") {
		t.Errorf("want only the reachable node's flows untracked:\n%s", out)
	}
	// Without forwarding the relay says what is missing, and takes everything away: an
	// untracked flow the node will not forward would be lost.
	l.owner.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
	leftOut(t, "forwarding off", l.set(r2, routes), len(routes), "ip_forward")
	if out := l.owner.Run("ip", "rule", "list", "priority", strconv.Itoa(DefaultPriority)); strings.TrimSpace(out) != "" {
		t.Errorf("forwarding off, rules left:\n%s", out)
	}
	if out := l.owner.Run("nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("forwarding off, nftables table left:\n%s", out)
	}
}

// A pod on the owner that asks the address itself is not relayed: its flow goes to the
// owner's own endpoint through kube-proxy's DNAT. Relayed, the other node's reply would
// come back through the owner, where conntrack never saw the flow and kube-proxy drops it
// as invalid.
func TestRelayLeavesThePodsOfTheOwnerAlone(t *testing.T) {
	l := newLab(t)
	pod := netlab.NewNS(t, "rpod")
	netlab.Veth(t, l.owner, "pod0", pod, "eth0")
	l.owner.Addr("pod0", "10.88.0.1/24")
	pod.Addr("eth0", "10.88.0.2/24")
	pod.Run("ip", "route", "add", "default", "via", "10.88.0.1")
	l.other.Run("ip", "route", "add", "10.88.0.0/24", "via", nodeIP["owner"].String()) // the pod network, routed
	l.owner.Run("nft", "add table inet kubefilter; add chain inet kubefilter forward { type filter hook forward priority 0; ct state invalid drop; }")
	routes := relay.Split(vip, transport.TCP, 80, "owner", map[string]netip.Addr{"owner": nodeIP["owner"], "other": nodeIP["other"]})
	r := l.relay(t, Options{})
	t.Cleanup(func() { _ = l.set(r, nil) })
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromName(pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, rt := range routes {
		sport := rt.From + 3
		var who string
		err := netlab.InNamespace(h, func() error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{Port: int(sport)}}
			c, err := d.Dial("tcp", netip.AddrPortFrom(vip, 80).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			who, _, _ = strings.Cut(line, " ")
			return err
		})
		if err != nil || who != "owner" {
			t.Errorf("the owner's pod, source port %d (relayed for outside clients to %s): answered by %q (%v), want the owner's endpoint", sport, rt.Node, who, err)
		}
	}
}

// An address local to the owner (kube-proxy in IPVS mode binds it to kube-ipvs0) cannot
// be relayed: the local table comes first. Set says so and installs nothing for it.
func TestRelayRefusesALocalAddress(t *testing.T) {
	l := newLab(t)
	l.owner.Run("ip", "addr", "add", vip.String()+"/32", "dev", "lo")
	routes := relay.Split(vip, transport.TCP, 80, "owner", map[string]netip.Addr{"owner": nodeIP["owner"], "other": nodeIP["other"]})
	r := l.relay(t, Options{})
	t.Cleanup(func() { _ = l.set(r, nil) })
	leftOut(t, "a local address", l.set(r, routes), len(routes), vip.String(), "IPVS")
	if out := l.owner.Run("ip", "rule", "list", "priority", strconv.Itoa(DefaultPriority)); strings.TrimSpace(out) != "" {
		t.Errorf("rules for a local address:\n%s", out)
	}
}

// A link that flaps takes the relay's routes with it; Watch says so, and the next Set
// puts them back.
func TestRelayWatchSeesAFlappedLink(t *testing.T) {
	l := newLab(t)
	routes := relay.Split(vip, transport.TCP, 80, "owner", map[string]netip.Addr{"owner": nodeIP["owner"], "other": nodeIP["other"]})
	r := l.relay(t, Options{})
	t.Cleanup(func() { _ = l.set(r, nil) })
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	changed := l.watch(t, r)
	l.owner.Run("ip", "link", "set", "eth0", "down")
	l.owner.Run("ip", "link", "set", "eth0", "up")
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not report the flapped link")
	}
	// The link's carrier and address return; the next Set routes again.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := l.set(r, routes)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the flap: %v", err)
		}
	}
	if out := l.owner.Run("ip", "route", "list", "table", "all"); !strings.Contains(out, "default via "+nodeIP["other"].String()) {
		t.Errorf("after the flap no table routes via %s:\n%s", nodeIP["other"], out)
	}
	for _, rt := range routes {
		if who, _, err := l.ask(vip, client, transport.TCP, rt.From+5); err != nil || who != "other" {
			t.Errorf("after the flap, source port %d: %q, %v", rt.From+5, who, err)
		}
	}
}

// watch runs r.Watch on the owner until the test ends; the channel says it reported.
func (l *lab) watch(t *testing.T, r *Relay) <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan struct{}, 16)
	done := make(chan error, 1)
	h := l.ns["owner"]
	go func() {
		done <- r.Watch(ctx, &h, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	time.Sleep(100 * time.Millisecond) // subscribed
	return changed
}

// A node no link reaches is left out (a state, not a failure); the address that puts it
// on a connected subnet wakes Watch, and the next Set relays to it.
func TestRelayWatchSeesALeftOutNodeReachable(t *testing.T) {
	l := newLab(t)
	routes := relay.Split(vip, transport.TCP, 80, "owner", map[string]netip.Addr{"owner": nodeIP["owner"], "other": netip.MustParseAddr("10.99.0.1")})
	r := l.relay(t, Options{})
	t.Cleanup(func() { _ = l.set(r, nil) })
	leftOut(t, "a node no link reaches", l.set(r, routes), len(routes), "10.99.0.1")
	changed := l.watch(t, r)
	l.owner.Run("ip", "addr", "add", "10.99.0.254/24", "dev", "eth0")
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not report the node's subnet come up")
	}
	if err := l.set(r, routes); err != nil {
		t.Fatalf("the node reachable: %v", err)
	}
	if out := l.owner.Run("ip", "route", "list", "table", "all"); !strings.Contains(out, "default via 10.99.0.1") {
		t.Errorf("no table routes via 10.99.0.1:\n%s", out)
	}
}

// The link towards the other node changes (a /32 route now through eth1) while nftables
// refuses the new table: the previous state stays whole and relaying, no gate for the new
// link comes in beside the old one (two gates on different links let nothing through).
func TestRelayGateChangeKeepsFlows(t *testing.T) {
	l := newLab(t)
	var fail atomic.Bool
	nft := func() (*nftables.Conn, error) {
		if fail.Load() {
			return nil, errors.New("nftables refuses")
		}
		return nftables.New()
	}
	routes := relay.Split(vip, transport.TCP, 80, "owner", map[string]netip.Addr{"owner": nodeIP["owner"], "other": nodeIP["other"]})
	r := l.relay(t, Options{NFT: nft})
	t.Cleanup(func() { fail.Store(false); _ = l.set(r, nil) })
	if err := l.set(r, routes); err != nil {
		t.Fatal(err)
	}
	sport := routes[0].From + 7
	if who, _, err := l.ask(vip, client, transport.TCP, sport); err != nil || who != "other" {
		t.Fatalf("before: %q %v", who, err)
	}
	l.owner.Run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
	l.owner.Run("ip", "link", "set", "eth1p", "up")
	l.owner.Run("ip", "link", "set", "eth1", "up")
	l.owner.Run("ip", "route", "add", nodeIP["other"].String()+"/32", "dev", "eth1")
	fail.Store(true)
	if err := l.set(r, routes); err == nil {
		t.Fatal("Set succeeded with nftables refusing")
	}
	if who, _, err := l.ask(vip, client, transport.TCP, sport+1); err != nil || who != "other" {
		t.Errorf("after a failed Set, source port %d: %q %v (want the previous state: other)\n%s", sport+1, who, err, l.owner.Run("ip", "rule", "list"))
	}
	if who, _, err := l.ask(vip, client, transport.TCP, 1000); err != nil || who != "owner" {
		t.Errorf("a port kept by the owner: %q %v", who, err)
	}
}
