package gobgp

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"

	"github.com/heraldlb/herald/pkg/bfd"
	"github.com/heraldlb/herald/pkg/bfd/udp"
	"github.com/heraldlb/herald/pkg/bgp"
)

func TestAPIPath(t *testing.T) {
	r := bgp.Route{Prefix: netip.MustParsePrefix("198.51.100.5/32"), LocalPref: 100, Communities: []uint32{64512<<16 | 7}, LargeCommunities: [][3]uint32{{64512, 1, 2}}}
	p, err := apiPath(r)
	if err != nil {
		t.Fatal(err)
	}
	var nlri api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&nlri); err != nil || nlri.Prefix != "198.51.100.5" || nlri.PrefixLen != 32 {
		t.Fatalf("NLRI %v, %v", &nlri, err)
	}
	got := map[string]bool{}
	for _, a := range p.Pattrs {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch v := m.(type) {
		case *api.NextHopAttribute:
			got["nexthop "+v.NextHop] = true
		case *api.LocalPrefAttribute:
			got["localpref"] = v.LocalPref == 100
		case *api.CommunitiesAttribute:
			got["communities"] = slices.Equal(v.Communities, r.Communities)
		case *api.LargeCommunitiesAttribute:
			got["large"] = len(v.Communities) == 1 && v.Communities[0].GlobalAdmin == 64512 && v.Communities[0].LocalData2 == 2
		case *api.OriginAttribute:
			got["origin"] = v.Origin == 0
		}
	}
	for _, want := range []string{"nexthop 0.0.0.0", "localpref", "communities", "large", "origin"} {
		if !got[want] {
			t.Errorf("path attributes lack %s: %v", want, got)
		}
	}
	p6, err := apiPath(bgp.Route{Prefix: netip.MustParsePrefix("2001:db8::5/128")})
	if err != nil || p6.Family.Afi != api.Family_AFI_IP6 {
		t.Fatalf("IPv6 path %v, %v", p6, err)
	}
	var mp api.MpReachNLRIAttribute
	found := false
	for _, a := range p6.Pattrs {
		if a.UnmarshalTo(&mp) == nil {
			found = slices.Equal(mp.NextHops, []string{"::"}) && len(mp.Nlris) == 1
		}
	}
	if !found {
		t.Errorf("IPv6 path without an MP_REACH_NLRI of unspecified next hop")
	}
}

func TestAPIPeer(t *testing.T) {
	p := apiPeer(bgp.Peer{Address: netip.MustParseAddr("fd00::1"), Port: 1179, ASN: 64500, MyASN: 64501,
		HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second, Source: netip.MustParseAddr("fd00::2"), Password: "pw", EBGPMultiHop: true})
	if p.Conf.PeerAsn != 64500 || p.Conf.LocalAsn != 64501 || p.Conf.AuthPassword != "pw" || p.Transport.RemotePort != 1179 ||
		p.Transport.LocalAddress != "fd00::2" || p.Timers.Config.HoldTime != 9 || p.Timers.Config.KeepaliveInterval != 3 ||
		!p.EbgpMultihop.Enabled || p.AfiSafis[0].Config.Family.Afi != api.Family_AFI_IP6 {
		t.Errorf("peer %v", p)
	}
}

// router is a second GoBGP instance on loopback address addr acting as the router, with
// Herald's side (from 127.0.0.1) as its neighbour.
type router struct {
	*server.BgpServer
	port uint16
}

func newRouter(t *testing.T, addr string) *router {
	t.Helper()
	ctx := context.Background()
	l, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &router{BgpServer: server.NewBgpServer(), port: uint16(port)}
	go r.Serve()
	t.Cleanup(r.Stop)
	if err := r.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: 64500, RouterId: "10.255.0.1", ListenPort: int32(port), ListenAddresses: []string{addr}}}); err != nil {
		t.Fatal(err)
	}
	if err := r.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{Conf: &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: 64501}}}); err != nil {
		t.Fatal(err)
	}
	return r
}

// received returns the prefixes the router holds.
func (r *router) received() []string {
	var out []string
	_ = r.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}},
		func(d *api.Destination) { out = append(out, d.Prefix) })
	slices.Sort(out)
	return out
}

// wait waits until the router holds exactly want.
func (r *router) wait(t *testing.T, want ...string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if got := r.received(); slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router has %v, want %v", r.received(), want)
		}
	}
}

// session returns the state of the router's session with Herald and the router ID
// Herald presented.
func (r *router) session() (api.PeerState_SessionState, string) {
	var state api.PeerState_SessionState
	var id string
	_ = r.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		state, id = p.GetState().GetSessionState(), p.GetState().GetRouterId()
	})
	return state, id
}

// bfdPorts gives each test BFD ports of its own, away from the real ones.
var bfdPorts = udp.Options{ListenPort: 33784, PeerPort: 33785, MultihopListenPort: 34784, MultihopPeerPort: 34785}

type running struct {
	*Server
	stop func()
}

func start(t *testing.T, opts Options) *running {
	t.Helper()
	if opts.BFD.ListenPort == 0 {
		opts.BFD = bfdPorts
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	r := &running{Server: s}
	r.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(r.stop)
	return r
}

func routes(rs ...string) []bgp.Route {
	var out []bgp.Route
	for _, r := range rs {
		out = append(out, bgp.Route{Prefix: netip.MustParsePrefix(r), Communities: []uint32{64512<<16 | 1}})
	}
	return out
}

// TestAgainstGoBGPRouter runs the adapter against a second GoBGP instance on loopback
// acting as the router: routes arrive, change and go, and the session closes.
func TestAgainstGoBGPRouter(t *testing.T) {
	ctx := context.Background()
	router := newRouter(t, "127.0.0.1")
	s := start(t, Options{RouterID: netip.MustParseAddr("10.255.0.2")})
	peer := bgp.Peer{Address: netip.MustParseAddr("127.0.0.1"), Port: router.port, ASN: 64500, MyASN: 64501, HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second}
	if err := s.SetPeers(ctx, []bgp.Peer{peer}); err != nil {
		t.Fatal(err)
	}
	wait := func(want ...string) { t.Helper(); router.wait(t, want...) }
	if err := s.SetRoutes(ctx, routes("198.51.100.5/32", "198.51.100.6/32")); err != nil {
		t.Fatal(err)
	}
	wait("198.51.100.5/32", "198.51.100.6/32")
	// The whole set again, one fewer: only that one is withdrawn.
	if err := s.SetRoutes(ctx, routes("198.51.100.6/32")); err != nil {
		t.Fatal(err)
	}
	wait("198.51.100.6/32")
	// Without the peer, the session closes and the router forgets the route.
	if err := s.SetPeers(ctx, nil); err != nil {
		t.Fatal(err)
	}
	wait()
}

// A session naming a router-id of its own presents it (in an instance of its own); the
// others present the node's; both routers get every route.
func TestRouterIDPerSession(t *testing.T) {
	if raceDetector {
		// GoBGP v3's StartBgp writes package-level route-selection options that every
		// instance's best-path code reads (fixed upstream on the v4 line, osrg/gobgp#3659).
		// Herald's instances all write the same defaults, so nothing changes, but the
		// race detector sees the write.
		t.Skip("GoBGP v3 shares route-selection options between BGP instances: see the comment")
	}
	ctx := context.Background()
	a, b := newRouter(t, "127.0.0.1"), newRouter(t, "127.0.0.2")
	s := start(t, Options{RouterID: netip.MustParseAddr("10.255.0.2")})
	if err := s.SetRoutes(ctx, routes("198.51.100.5/32")); err != nil {
		t.Fatal(err)
	}
	peers := []bgp.Peer{
		{Address: netip.MustParseAddr("127.0.0.1"), Port: a.port, ASN: 64500, MyASN: 64501, HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second},
		{Address: netip.MustParseAddr("127.0.0.2"), Port: b.port, ASN: 64500, MyASN: 64501, HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second, RouterID: netip.MustParseAddr("10.9.9.9")},
	}
	if err := s.SetPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	a.wait(t, "198.51.100.5/32")
	b.wait(t, "198.51.100.5/32")
	if _, id := a.session(); id != "10.255.0.2" {
		t.Errorf("router a sees router ID %q, want the node's 10.255.0.2", id)
	}
	if _, id := b.session(); id != "10.9.9.9" {
		t.Errorf("router b sees router ID %q, want the session's 10.9.9.9", id)
	}
	// A route added later reaches both instances; a changed router ID moves the session.
	if err := s.SetRoutes(ctx, routes("198.51.100.5/32", "198.51.100.6/32")); err != nil {
		t.Fatal(err)
	}
	b.wait(t, "198.51.100.5/32", "198.51.100.6/32")
	peers[1].RouterID = netip.MustParseAddr("10.8.8.8")
	if err := s.SetPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if st, id := b.session(); st == api.PeerState_ESTABLISHED && id == "10.8.8.8" {
			break
		}
		if time.Now().After(deadline) {
			st, id := b.session()
			t.Fatalf("router b: session %v with router ID %q, want established with 10.8.8.8", st, id)
		}
	}
	b.wait(t, "198.51.100.5/32", "198.51.100.6/32")
}

// On the way out, the routes are withdrawn before the session closes: the router sees
// the withdrawal while the session is still up.
func TestWithdrawBeforeCease(t *testing.T) {
	ctx := context.Background()
	router := newRouter(t, "127.0.0.1")
	type seen struct {
		withdraw bool
		state    api.PeerState_SessionState
	}
	var mu sync.Mutex
	var log []seen
	if err := router.WatchEvent(ctx, &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}, func(r *api.WatchEventResponse) {
		mu.Lock()
		defer mu.Unlock()
		if p := r.GetPeer(); p != nil && p.GetType() == api.WatchEventResponse_PeerEvent_STATE {
			log = append(log, seen{state: p.GetPeer().GetState().GetSessionState()})
		}
		for _, p := range r.GetTable().GetPaths() {
			if p.GetIsWithdraw() {
				log = append(log, seen{withdraw: true})
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	s := start(t, Options{RouterID: netip.MustParseAddr("10.255.0.2")})
	if err := s.SetPeers(ctx, []bgp.Peer{{Address: netip.MustParseAddr("127.0.0.1"), Port: router.port, ASN: 64500, MyASN: 64501, HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRoutes(ctx, routes("198.51.100.5/32")); err != nil {
		t.Fatal(err)
	}
	router.wait(t, "198.51.100.5/32")
	s.stop()
	router.wait(t)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := router.session(); st != api.PeerState_ESTABLISHED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session is still up after Run returned")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	withdrawAt, downAt := -1, -1
	established := false
	for i, e := range log {
		switch {
		case e.withdraw && withdrawAt < 0:
			withdrawAt = i
		case !e.withdraw && e.state == api.PeerState_ESTABLISHED:
			established = true
		case !e.withdraw && established && downAt < 0:
			downAt = i
		}
	}
	if withdrawAt < 0 || (downAt >= 0 && downAt < withdrawAt) {
		t.Fatalf("the router saw the session close before the withdrawal: %+v", log)
	}
}

// A BFD session that falls from Up resets its BGP session at once, and says so (a
// SessionEvent, a metric); the BGP session then comes back on its own. It does so also
// while the server is busy with routes (SetRoutes holds its lock across every path).
func TestBFDDownResetsTheSession(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "busy with routes"}[busy], func(t *testing.T) { testBFDDownResets(t, busy) })
	}
}

func testBFDDownResets(t *testing.T, busy bool) {
	ctx := context.Background()
	router := newRouter(t, "127.0.0.1")
	events := make(chan bgp.SessionEvent, 20)
	s := start(t, Options{RouterID: netip.MustParseAddr("10.255.0.2"), OnSession: func(e bgp.SessionEvent) { events <- e }})
	// The router's BFD: a socket answering as RFC 5880 asks until told to fall silent.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: bfdPorts.PeerPort})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = ipv4.NewConn(c).SetTTL(255)
	silent := make(chan struct{})
	bfdDone := make(chan struct{})
	go func() {
		defer close(bfdDone)
		buf := make([]byte, 64)
		to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: bfdPorts.ListenPort}
		for range 1000 {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			select {
			case <-silent:
				continue
			default:
			}
			p, err := bfd.Unmarshal(buf[:n])
			if err != nil {
				continue
			}
			reply := bfd.Packet{State: bfd.Up, DetectMult: 3, MyDiscriminator: 42, YourDiscriminator: p.MyDiscriminator,
				DesiredMinTx: 50 * time.Millisecond, RequiredMinRx: 50 * time.Millisecond, Final: p.Poll}
			if p.State == bfd.Down {
				reply.State = bfd.Init
			}
			_, _ = c.WriteToUDP(reply.Marshal(), to)
		}
	}()
	peer := bgp.Peer{Address: netip.MustParseAddr("127.0.0.1"), Port: router.port, ASN: 64500, MyASN: 64501, HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second,
		BFD: bfd.Config{DesiredMinTx: 50 * time.Millisecond, RequiredMinRx: 50 * time.Millisecond, DetectMult: 3}.WithDefaults()}
	if err := s.SetPeers(ctx, []bgp.Peer{peer}); err != nil {
		t.Fatal(err)
	}
	seen := map[bgp.State]int{}
	want := func(st bgp.State, n int) {
		t.Helper()
		timeout := time.After(15 * time.Second)
		for seen[st] < n {
			select {
			case e := <-events:
				seen[e.State]++
			case <-timeout:
				t.Fatalf("%d %s events, want %d (seen %v)", seen[st], st, n, seen)
			}
		}
	}
	want(bgp.Established, 1)
	want(bgp.BFDUp, 1)
	if busy {
		s.mu.Lock() // as SetRoutes does, adding thousands of paths
	}
	close(silent)
	want(bgp.BFDDown, 1)
	want(bgp.Down, 1)
	if busy {
		s.mu.Unlock()
	}
	want(bgp.Established, 2)
	if got := testutil.ToFloat64(s.metrics.Resets.WithLabelValues("127.0.0.1", "bfd_down")); got != 1 {
		t.Errorf("herald_bgp_session_resets_total = %v", got)
	}
	if st := s.BFD(); len(st) != 1 || st[0].State != bfd.Down || st[0].Diag != bfd.DiagDetectionExpired {
		t.Errorf("BFD sessions %+v", st)
	}
	s.stop()
	c.Close()
	<-bfdDone
}
