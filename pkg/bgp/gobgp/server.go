package gobgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	bgppacket "github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// Options configure a Server.
type Options struct {
	RouterID   netip.Addr            // required: an IPv4 address, usually the node's
	ListenPort int32                 // 0: do not listen (dial out only)
	Logger     *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil registers nowhere
}

// Server is an embedded GoBGP speaker.
type Server struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics.BGP
	bgp     *server.BgpServer
	serving chan struct{} // closed once Run serves

	stateMu sync.Mutex
	state   map[string]api.PeerState_SessionState // last state seen, by peer address
	conf    map[string]bgp.Peer                   // what was configured, by peer address

	mu      sync.Mutex
	started bool
	peers   map[netip.Addr]bgp.Peer
	paths   map[netip.Prefix]path
}

type path struct {
	route bgp.Route
	uuid  []byte
}

var _ bgp.Speaker = (*Server)(nil)

// New returns a Server; nothing runs before Run.
func New(opts Options) (*Server, error) {
	if !opts.RouterID.Is4() {
		return nil, fmt.Errorf("gobgp: the router ID %q must be an IPv4 address", opts.RouterID)
	}
	opts.Logger = logging.OrDiscard(opts.Logger)
	opts.Registerer = metrics.OrPrivate(opts.Registerer)
	if opts.ListenPort == 0 {
		opts.ListenPort = -1
	}
	return &Server{
		opts: opts, log: opts.Logger, metrics: metrics.NewBGP(opts.Registerer),
		bgp:     server.NewBgpServer(server.LoggerOption(&logAdapter{log: opts.Logger})),
		serving: make(chan struct{}),
		peers:   map[netip.Addr]bgp.Peer{}, paths: map[netip.Prefix]path{},
		state: map[string]api.PeerState_SessionState{},
		conf:  map[string]bgp.Peer{},
	}, nil
}

// Run serves until ctx ends, then closes every session with a Cease notification, so the
// routers withdraw this node's routes at once.
func (s *Server) Run(ctx context.Context) error {
	go s.bgp.Serve()
	close(s.serving)
	<-ctx.Done()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		if err := s.bgp.StopBgp(context.Background(), &api.StopBgpRequest{}); err != nil {
			return fmt.Errorf("stop BGP: %w", err)
		}
	}
	s.bgp.Stop()
	return nil
}

func (s *Server) wait(ctx context.Context) error {
	select {
	case <-s.serving:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLocked starts the BGP instance on first use, with the first peer's local AS as
// the global AS (each session sets its own).
func (s *Server) startLocked(ctx context.Context, asn uint32) error {
	if s.started {
		return nil
	}
	if err := s.bgp.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: asn, RouterId: s.opts.RouterID.String(), ListenPort: s.opts.ListenPort,
	}}); err != nil {
		return fmt.Errorf("start BGP (AS %d, router ID %s): %w", asn, s.opts.RouterID, err)
	}
	if err := s.bgp.WatchEvent(context.Background(), &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.onPeerEvent); err != nil {
		return fmt.Errorf("watch BGP sessions: %w", err)
	}
	s.started = true
	return nil
}

func (s *Server) onPeerEvent(r *api.WatchEventResponse) {
	ev := r.GetPeer()
	if ev == nil || ev.GetType() != api.WatchEventResponse_PeerEvent_STATE {
		return
	}
	p := ev.GetPeer()
	addr := p.GetConf().GetNeighborAddress()
	state := p.GetState().GetSessionState()
	name := stateName(state)
	s.metrics.SessionChanges.WithLabelValues(addr, name).Inc()
	up := 0.0
	if state == api.PeerState_ESTABLISHED {
		up = 1
	}
	s.metrics.SessionUp.WithLabelValues(addr).Set(up)
	s.log.Info("BGP session state", "peer", addr, "state", name, "peerASN", p.GetConf().GetPeerAsn())

	s.stateMu.Lock()
	prev := s.state[addr]
	s.state[addr] = state
	conf := s.conf[addr]
	s.stateMu.Unlock()
	if state == api.PeerState_IDLE && (prev == api.PeerState_OPENSENT || prev == api.PeerState_OPENCONFIRM) {
		// GoBGP drops a NOTIFICATION received here without keeping its code; what is
		// certain is that the router would not take our OPEN.
		s.log.Error("refused by BGP peer", "peer", addr,
			"reason", fmt.Sprintf("the router closed the session during the OPEN exchange: check that my-asn %d and peer-asn %d match its configuration", conf.MyASN, conf.ASN))
	}
}

func stateName(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_IDLE:
		return "idle"
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "unknown"
}

// SetPeers opens sessions to peers and closes those not among them; a peer whose
// settings changed is re-created.
func (s *Server) SetPeers(ctx context.Context, peers []bgp.Peer) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[netip.Addr]bgp.Peer{}
	for _, p := range peers {
		want[p.Address] = p
	}
	var errs []error
	for addr, old := range s.peers {
		if p, ok := want[addr]; ok && p == old {
			continue
		}
		if err := s.bgp.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("remove BGP peer %s: %w", addr, err))
			continue
		}
		delete(s.peers, addr)
		s.metrics.SessionUp.DeleteLabelValues(addr.String())
		s.log.Info("BGP peer removed", "peer", addr)
	}
	for _, p := range peers {
		if _, ok := s.peers[p.Address]; ok {
			continue
		}
		if err := s.startLocked(ctx, p.MyASN); err != nil {
			return err
		}
		if err := s.bgp.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(p)}); err != nil {
			errs = append(errs, fmt.Errorf("add BGP peer %s (AS %d): %w", p.Address, p.ASN, err))
			continue
		}
		s.peers[p.Address] = p
		s.stateMu.Lock()
		s.conf[p.Address.String()] = p
		s.stateMu.Unlock()
		s.metrics.SessionUp.WithLabelValues(p.Address.String()).Set(0)
		s.log.Info("BGP peer added", "peer", p.Address, "peerASN", p.ASN, "myASN", p.MyASN, "md5", p.Password != "")
	}
	return errors.Join(errs...)
}

func apiPeer(p bgp.Peer) *api.Peer {
	fam := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	if p.Address.Is6() {
		fam = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(), PeerAsn: p.ASN, LocalAsn: p.MyASN, AuthPassword: p.Password,
		},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: uint64(p.HoldTime.Seconds()), KeepaliveInterval: uint64(p.KeepaliveTime.Seconds()), ConnectRetry: 2,
		}},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}},
	}
	if p.Source.IsValid() {
		ap.Transport.LocalAddress = p.Source.String()
	}
	if p.EBGPMultiHop {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: 255}
	}
	return ap
}

// SetRoutes advertises routes and withdraws the ones not among them; a route whose
// attributes changed is advertised again.
func (s *Server) SetRoutes(ctx context.Context, routes []bgp.Route) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		return nil // no peer selects this node: nothing to advertise to
	}
	want := map[netip.Prefix]bgp.Route{}
	for _, r := range routes {
		want[r.Prefix] = r
	}
	var errs []error
	for prefix, old := range s.paths {
		if r, ok := want[prefix]; ok && r.Equal(old.route) {
			continue
		}
		if err := s.bgp.DeletePath(ctx, &api.DeletePathRequest{Uuid: old.uuid}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", prefix, err))
			continue
		}
		delete(s.paths, prefix)
	}
	for _, r := range routes {
		if _, ok := s.paths[r.Prefix]; ok {
			continue
		}
		p, err := apiPath(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := s.bgp.AddPath(ctx, &api.AddPathRequest{Path: p})
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", r.Prefix, err))
			continue
		}
		s.paths[r.Prefix] = path{route: r, uuid: resp.GetUuid()}
	}
	s.metrics.Routes.Set(float64(len(s.paths)))
	return errors.Join(errs...)
}

// apiPath builds GoBGP's path for r, with an unspecified next hop that GoBGP fills in
// with the local address of each session.
func apiPath(r bgp.Route) (*api.Path, error) {
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: r.Prefix.Addr().String(), PrefixLen: uint32(r.Prefix.Bits())})
	if err != nil {
		return nil, err
	}
	attrs := []proto.Message{&api.OriginAttribute{Origin: 0}}
	fam := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	if r.Prefix.Addr().Is4() {
		attrs = append(attrs, &api.NextHopAttribute{NextHop: "0.0.0.0"})
	} else {
		fam = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
		attrs = append(attrs, &api.MpReachNLRIAttribute{Family: fam, NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}})
	}
	if r.LocalPref != 0 {
		attrs = append(attrs, &api.LocalPrefAttribute{LocalPref: r.LocalPref})
	}
	if len(r.Communities) > 0 {
		attrs = append(attrs, &api.CommunitiesAttribute{Communities: r.Communities})
	}
	if len(r.LargeCommunities) > 0 {
		lc := &api.LargeCommunitiesAttribute{}
		for _, c := range r.LargeCommunities {
			lc.Communities = append(lc.Communities, &api.LargeCommunity{GlobalAdmin: c[0], LocalData1: c[1], LocalData2: c[2]})
		}
		attrs = append(attrs, lc)
	}
	var pattrs []*anypb.Any
	for _, a := range attrs {
		m, err := anypb.New(a)
		if err != nil {
			return nil, err
		}
		pattrs = append(pattrs, m)
	}
	return &api.Path{Family: fam, Nlri: nlri, Pattrs: pattrs}, nil
}

// logAdapter routes GoBGP's log into slog.
type logAdapter struct{ log *slog.Logger }

func (l *logAdapter) fields(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		switch k {
		case "Key":
			k = "peer"
		case "Topic":
			k = "topic"
		}
		out = append(out, k, v)
	}
	return out
}

func (l *logAdapter) Panic(msg string, f gobgplog.Fields) {
	l.log.Error(msg, l.fields(f)...)
	panic(msg)
}
func (l *logAdapter) Fatal(msg string, f gobgplog.Fields) { l.log.Error(msg, l.fields(f)...) }
func (l *logAdapter) Error(msg string, f gobgplog.Fields) { l.log.Error(msg, l.fields(f)...) }
func (l *logAdapter) Warn(msg string, f gobgplog.Fields) {
	if msg == "received notification" {
		// Say plainly which router closed the session and why (RFC 4271 6, its codes).
		code, _ := f["Code"].(uint8)
		sub, _ := f["Subcode"].(uint8)
		l.log.Error("refused by BGP peer", "peer", f["Key"], "reason", notificationReason(code, sub))
		return
	}
	if msg == "sent notification" {
		code, _ := f["Code"].(uint8)
		sub, _ := f["Subcode"].(uint8)
		l.log.Error("refusing BGP peer", "peer", f["Key"], "reason", notificationReason(code, sub))
		return
	}
	l.log.Warn(msg, l.fields(f)...)
}

// notificationReason names a NOTIFICATION's error, as "open message: bad peer AS".
func notificationReason(code, subcode uint8) string {
	s := bgppacket.NewNotificationErrorCode(code, subcode).String()
	s = strings.Replace(s, "bad peer as", "bad peer AS", 1)
	return s
}
func (l *logAdapter) Info(msg string, f gobgplog.Fields)  { l.log.Info(msg, l.fields(f)...) }
func (l *logAdapter) Debug(msg string, f gobgplog.Fields) { l.log.Debug(msg, l.fields(f)...) }
func (l *logAdapter) SetLevel(gobgplog.LogLevel)          {}
func (l *logAdapter) GetLevel() gobgplog.LogLevel         { return gobgplog.DebugLevel }
