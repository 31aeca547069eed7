package apiconn

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"k8s.io/client-go/rest"

	"github.com/heraldlb/herald/pkg/metrics"
)

func TestHealthCheckSetsTheEnvironmentUnlessTheAdminDid(t *testing.T) {
	t.Setenv(EnvReadIdle, "")
	t.Setenv(EnvPing, "7")
	os.Unsetenv(EnvReadIdle)
	if err := HealthCheck(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got, want := os.Getenv(EnvReadIdle), "5"; got != want {
		t.Errorf("%s=%q, want %q", EnvReadIdle, got, want)
	}
	if got, want := os.Getenv(EnvPing), "7"; got != want {
		t.Errorf("%s=%q, want the admin's %q", EnvPing, got, want)
	}
	for _, bad := range []time.Duration{0, 500 * time.Millisecond, 1500 * time.Millisecond, -time.Second} {
		if err := HealthCheck(bad); err == nil {
			t.Errorf("HealthCheck(%s): no error", bad)
		}
	}
}

func TestTriggerFiresOnAnAdministrativeDownOfALinkThatCarriesTraffic(t *testing.T) {
	none := func([]netip.Addr) bool { return false }
	tr := newTrigger()
	tr.address(1, netip.MustParseAddr("192.168.10.12"), true, none) // eth0
	tr.address(2, netip.MustParseAddr("fe80::1"), true, none)       // a pod's veth
	tr.gateway(3)                                                   // an unnumbered uplink
	tr.address(3, netip.MustParseAddr("fe80::2"), true, none)
	tr.address(5, netip.MustParseAddr("10.96.0.10"), true, none) // node-local-dns's dummy
	steps := []struct {
		name         string
		index        int
		adminUp, dum bool
		want         bool
	}{
		{"first sight of a down link", 1, false, false, false},
		{"it comes up", 1, true, false, false},
		{"it goes down, holding an address", 1, false, false, true},
		{"down again (a carrier change while down)", 1, false, false, false},
		{"up", 1, true, false, false},
		{"a veth with a link-local address goes up", 2, true, false, false},
		{"and down", 2, false, false, false},
		{"an uplink with no address but a gateway route goes up", 3, true, false, false},
		{"and down (the kernel masqueraded out of it with another link's address)", 3, false, false, true},
		{"first sight of an up link", 4, true, false, false},
		{"it goes down, having held nothing", 4, false, false, false},
		{"a dummy holding a global address goes up", 5, true, true, false},
		{"and down: nothing left by it", 5, false, true, false},
	}
	for _, s := range steps {
		if got := tr.link(s.index, s.adminUp, s.dum); got != s.want {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}
	tr.link(1, true, false)
	tr.gone(1)
	if tr.link(1, false, false) {
		t.Error("a link deleted and seen again down: fired, but its first sight says nothing")
	}
	tr.link(1, true, false)
	if tr.link(1, false, false) {
		t.Error("a link index reused by a new link that held nothing: fired for the old link's address")
	}
	// What a link held is remembered: its IPv6 addresses are deleted before its down
	// message is read, and its IPv4 routes silently.
	tr.link(6, true, false)
	tr.address(6, netip.MustParseAddr("fd10::12"), true, none)
	tr.address(6, netip.MustParseAddr("fd10::12"), false, none)
	if !tr.link(6, false, false) {
		t.Error("a link that held a global address went down: did not fire")
	}
}

func TestTriggerFiresOnADeletedAddressThatCarriesTraffic(t *testing.T) {
	tr := newTrigger()
	source := netip.MustParseAddr("10.96.0.1") // a socket's own address, as under kube-proxy in IPVS mode
	from := func(a []netip.Addr) bool { return a[0] == source }
	tr.link(1, true, false) // eth0
	tr.link(2, true, true)  // kube-ipvs0
	tr.link(3, true, false) // a pod's veth
	for _, c := range []struct {
		name  string
		index int
		addr  string
		added bool
		want  bool
	}{
		{"an address added", 1, "192.168.10.12", true, false},
		{"the node's address deleted", 1, "192.168.10.12", false, true},
		{"a link-local address deleted", 3, "fe80::1", false, false},
		{"a Service address leaving the dummy", 2, "10.96.5.5", false, false},
		{"the address the connections left from, though on the dummy", 2, "10.96.0.1", false, true},
	} {
		if got := tr.address(c.index, netip.MustParseAddr(c.addr), c.added, from); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestGatewayLinks(t *testing.T) {
	gw := net.ParseIP("192.168.10.1")
	for _, c := range []struct {
		name  string
		route netlink.Route
		want  []int
	}{
		{"a directly connected network", netlink.Route{LinkIndex: 2}, nil},
		{"a pod's veth route", netlink.Route{LinkIndex: 7, Scope: netlink.SCOPE_LINK}, nil},
		{"the default route", netlink.Route{LinkIndex: 2, Gw: gw}, []int{2}},
		{"IPv4 via an IPv6 next hop (unnumbered)", netlink.Route{LinkIndex: 3, Via: &netlink.Via{AddrFamily: netlink.FAMILY_V6, Addr: net.ParseIP("fe80::1")}}, []int{3}},
		{"equal-cost multipath", netlink.Route{MultiPath: []*netlink.NexthopInfo{{LinkIndex: 3, Gw: gw}, {LinkIndex: 4, Gw: gw}, {LinkIndex: 5}}}, []int{3, 4}},
	} {
		if got := gatewayLinks(c.route); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// A connection opened after the event (client-go's own retry, once the routes were
// back) is healthy: the replacement closes only those open, or being opened, at the
// event, and counts only when it closed one.
func TestConnsCloseOnlyTheConnectionsOpenAtTheEvent(t *testing.T) {
	var during func() // run by the dial after the connection is made, before it returns
	dials := 0
	cfg := &rest.Config{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials++
		c, _ := net.Pipe()
		if d := during; d != nil {
			during = nil
			d()
		}
		return c, nil
	}}
	conns := Track(cfg)
	dial := func() net.Conn {
		t.Helper()
		c, err := cfg.Dial(t.Context(), "tcp", "10.96.0.1:443")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	called := 0
	count := func() { called++ }

	old := dial()
	conns.Retire()
	fresh := dial()
	conns.CloseRetired(count)
	if !closed(old) || closed(fresh) || called != 1 {
		t.Errorf("old closed %v (want true), fresh closed %v (want false), counted %d (want 1)", closed(old), closed(fresh), called)
	}
	conns.CloseRetired(count)
	conns.Retire()
	fresh.Close() // the health check closed it before the replacement
	conns.CloseRetired(count)
	if called != 1 {
		t.Errorf("nothing to close, or only what was closed already: counted %d times, want 1", called)
	}

	// The event is read while a connection is being opened: it may be broken too.
	during = conns.Retire
	opening := dial()
	conns.CloseRetired(count)
	if !closed(opening) || called != 2 {
		t.Errorf("a connection being opened at the event: closed %v (want true), counted %d (want 2)", closed(opening), called)
	}

	// Retired and closed while it was being opened (the routes were back): it is closed,
	// and another one opened in its place.
	dials = 0
	during = func() { conns.Retire(); conns.CloseRetired(count) }
	replacement := dial()
	if closed(replacement) || dials != 2 {
		t.Errorf("a connection whose generation was closed while it was opened: returned one closed %v (want false), dials %d (want 2)", closed(replacement), dials)
	}
	conns.CloseRetired(count)
	if closed(replacement) {
		t.Error("the connection opened after the replacement was closed by the next CloseRetired")
	}
}

// closed reports whether c was closed on this side.
func closed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}

// The replacer closes the connections only once a new one can be made, once for the
// events of one outage.
func TestReplacerWaitsUntilTheServerIsReachable(t *testing.T) {
	var mu sync.Mutex
	reachable := false
	var server []net.Conn
	cfg := &rest.Config{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if !reachable && len(server) > 0 {
			return nil, errors.New("network is unreachable")
		}
		c, s := net.Pipe()
		server = append(server, s)
		return c, nil
	}}
	conns := Track(cfg)
	conn, err := cfg.Dial(t.Context(), "tcp", "10.96.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	w := &LinkWatch{conns: conns, log: slog.New(slog.DiscardHandler), metrics: metrics.NewAPIConns(prometheus.NewRegistry()), retryEvery: time.Millisecond, tryLimit: time.Second, giveUpAfter: time.Minute, minInterval: time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	kick := make(chan reason, 1)
	done := make(chan struct{})
	go func() { defer close(done); w.replacer(ctx, kick) }()
	defer func() { cancel(); <-done }()
	conns.Retire() // as the watch does on each event
	kick <- reason{"link_down", "eth0"}
	time.Sleep(50 * time.Millisecond)
	conns.Retire()
	kick <- reason{"address_deleted", "fd10::12"} // the same outage's second event
	if closed(conn) {
		t.Fatal("closed while the server was unreachable")
	}
	mu.Lock()
	reachable = true
	mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); !closed(conn); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not closed 5 s after the server was reachable again")
		}
	}
	time.Sleep(50 * time.Millisecond) // fifty times minInterval: a second replacement would have come
	for why, want := range map[string]float64{"link_down": 1, "address_deleted": 0} {
		if got := testutil.ToFloat64(w.metrics.Replaced.WithLabelValues(why)); got != want {
			t.Errorf("replaced{why=%q} = %v, want %v: one outage, one replacement", why, got, want)
		}
	}
}
