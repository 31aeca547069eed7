package apiconn

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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

func TestTriggerFiresOnAnAdministrativeDownOfALinkWithAnAddress(t *testing.T) {
	yes, no := func() bool { return true }, func() bool { return false }
	tr := newTrigger()
	steps := []struct {
		name    string
		index   int
		adminUp bool
		holds   func() bool
		want    bool
	}{
		{"first sight of a down link", 1, false, yes, false},
		{"it comes up", 1, true, yes, false},
		{"it goes down, holding an address", 1, false, yes, true},
		{"down again (a carrier change while down)", 1, false, yes, false},
		{"up", 1, true, yes, false},
		{"another link without an address goes up", 2, true, no, false},
		{"and down", 2, false, no, false},
		{"first sight of an up link", 3, true, yes, false},
		{"it goes down", 3, false, yes, true},
	}
	for _, s := range steps {
		if got := tr.link(s.index, s.adminUp, false, s.holds); got != s.want {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}
	tr.gone(3)
	if tr.link(3, false, false, yes) {
		t.Error("a link deleted and seen again down: fired, but its first sight says nothing")
	}
	// A link whose global address went before its down message was read (IPv6 addresses
	// go with the link) fired for what it held.
	tr.link(4, true, false, no)
	tr.address(4, netip.MustParseAddr("fd10::12"), true, func([]netip.Addr) bool { return false })
	if !tr.link(4, false, false, no) {
		t.Error("a link that held a global address went down: did not fire")
	}
}

func TestTriggerFiresOnADeletedAddressThatCarriesTraffic(t *testing.T) {
	tr := newTrigger()
	source := netip.MustParseAddr("10.96.0.1") // a socket's own address, as under kube-proxy in IPVS mode
	from := func(a []netip.Addr) bool { return a[0] == source }
	tr.link(1, true, false, func() bool { return true })  // eth0
	tr.link(2, true, true, func() bool { return false })  // kube-ipvs0
	tr.link(3, true, false, func() bool { return false }) // a pod's veth
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

func TestHoldsGlobal(t *testing.T) {
	for _, c := range []struct {
		addrs []string
		want  bool
	}{
		{nil, false},
		{[]string{"fe80::1"}, false},
		{[]string{"127.0.0.1", "::1"}, false},
		{[]string{"fe80::1", "192.168.10.12"}, true},
		{[]string{"fd10::12"}, true},
	} {
		var addrs []netip.Addr
		for _, a := range c.addrs {
			addrs = append(addrs, netip.MustParseAddr(a))
		}
		if got := holdsGlobal(addrs); got != c.want {
			t.Errorf("holdsGlobal(%v) = %v, want %v", c.addrs, got, c.want)
		}
	}
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
	kick <- reason{"link_down", "eth0"}
	time.Sleep(50 * time.Millisecond)
	kick <- reason{"address_deleted", "fd10::12"} // the same outage's second event
	closed := func() bool {
		_ = conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := conn.Read(make([]byte, 1))
		return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
	}
	if closed() {
		t.Fatal("closed while the server was unreachable")
	}
	mu.Lock()
	reachable = true
	mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); !closed(); time.Sleep(time.Millisecond) {
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
