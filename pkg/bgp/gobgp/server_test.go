package gobgp

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"

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

// TestAgainstGoBGPRouter runs the adapter against a second GoBGP instance on loopback
// acting as the router: routes arrive, change and go, and the session closes.
func TestAgainstGoBGPRouter(t *testing.T) {
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	router := server.NewBgpServer()
	go router.Serve()
	t.Cleanup(router.Stop)
	if err := router.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: 64500, RouterId: "10.255.0.1", ListenPort: int32(port), ListenAddresses: []string{"127.0.0.1"}}}); err != nil {
		t.Fatal(err)
	}
	if err := router.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{Conf: &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: 64501}}}); err != nil {
		t.Fatal(err)
	}

	s, err := New(Options{RouterID: netip.MustParseAddr("10.255.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	t.Cleanup(func() { cancel(); <-done })
	peer := bgp.Peer{Address: netip.MustParseAddr("127.0.0.1"), Port: uint16(port), ASN: 64500, MyASN: 64501, HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second}
	if err := s.SetPeers(ctx, []bgp.Peer{peer}); err != nil {
		t.Fatal(err)
	}
	routes := func(rs ...string) []bgp.Route {
		var out []bgp.Route
		for _, r := range rs {
			out = append(out, bgp.Route{Prefix: netip.MustParsePrefix(r), Communities: []uint32{64512<<16 | 1}})
		}
		return out
	}
	received := func() []string {
		var out []string
		_ = router.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}},
			func(d *api.Destination) { out = append(out, d.Prefix) })
		slices.Sort(out)
		return out
	}
	wait := func(want ...string) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if got := received(); slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the router has %v, want %v", received(), want)
			}
		}
	}
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
