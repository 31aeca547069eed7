package gobgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	bgppacket "github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heraldlb/herald/pkg/bfd"
	"github.com/heraldlb/herald/pkg/bfd/udp"
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
	// OnSession is told when a BGP session is established or goes down, and when the
	// BFD session beside one goes up or down (on a goroutine of the Server's; it must
	// not block).
	OnSession func(bgp.SessionEvent)
	// BFD sets the BFD ports (tests) and the BFD sessions' logger (default Logger); its
	// OnChange and Registerer are the Server's.
	BFD udp.Options
}

// Server is an embedded GoBGP speaker, with a BFD session beside every BGP session whose
// peer has a BFD profile. GoBGP v3 presents one router ID per BGP instance, so sessions
// that name a router-id of their own run in an instance of their own; every instance
// advertises the same routes, and only the node's listens.
type Server struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics.BGP
	bfd     *udp.Manager
	serving chan struct{} // closed once Run serves

	stateMu sync.Mutex
	state   map[string]api.PeerState_SessionState // last state seen, by peer address
	conf    map[string]bgp.Peer                   // what was configured, by peer address
	// resets is the instance holding each peer's session, for BFD to reset it without
	// s.mu, which SetRoutes holds across thousands of paths; emptied when Run stops.
	resets map[netip.Addr]*instance

	mu        sync.Mutex
	stopped   bool
	instances map[netip.Addr]*instance // by router ID
	spare     []*instance              // stopped instances, to reuse (GoBGP's Serve never returns)
	peers     map[netip.Addr]bgp.Peer
	routes    []bgp.Route // what SetRoutes last asked
}

// instance is one GoBGP BgpServer and what it holds.
type instance struct {
	id      netip.Addr
	bgp     *server.BgpServer
	started bool
	peers   map[netip.Addr]bool
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
	s := &Server{
		opts: opts, log: opts.Logger, metrics: metrics.NewBGP(opts.Registerer),
		serving:   make(chan struct{}),
		instances: map[netip.Addr]*instance{}, peers: map[netip.Addr]bgp.Peer{},
		state:  map[string]api.PeerState_SessionState{},
		conf:   map[string]bgp.Peer{},
		resets: map[netip.Addr]*instance{},
	}
	bo := opts.BFD
	bo.OnChange, bo.Registerer = s.onBFD, opts.Registerer
	if bo.Logger == nil {
		bo.Logger = opts.Logger
	}
	s.bfd = udp.NewManager(bo)
	return s, nil
}

// Run serves until ctx ends. Then it withdraws every route, waits (briefly) for the
// withdrawals to be on the wire, and closes every session with a Cease: the routers drop
// this node's paths on the withdrawal, before the session even closes.
func (s *Server) Run(ctx context.Context) error {
	bctx, stopBFD := context.WithCancel(context.WithoutCancel(ctx))
	bfdDone := make(chan error, 1)
	go func() { bfdDone <- s.bfd.Run(bctx) }()
	close(s.serving)
	var bfdErr error
	select {
	case <-ctx.Done():
	case bfdErr = <-bfdDone:
		// Port 3784 or 4784 taken (an FRR on the node?): BGP goes on without BFD.
		s.log.Error("BFD cannot run; BGP sessions go on without it", "err", bfdErr)
		<-ctx.Done()
	}
	s.mu.Lock()
	s.stopped = true
	s.stateMu.Lock()
	clear(s.resets)
	s.stateMu.Unlock()
	sent := s.sentLocked()
	withdrawn := false
	for _, in := range s.instances {
		for prefix, p := range in.paths {
			if err := in.bgp.DeletePath(context.Background(), &api.DeletePathRequest{Uuid: p.uuid}); err == nil {
				withdrawn = true
				delete(in.paths, prefix)
			}
		}
	}
	if withdrawn {
		s.drainLocked(sent, 250*time.Millisecond)
	}
	var errs []error
	for _, in := range s.instances {
		if err := in.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	s.metrics.Routes.Set(0)
	s.mu.Unlock()
	stopBFD()
	if bfdErr == nil {
		<-bfdDone
	}
	return errors.Join(errs...)
}

// sentLocked returns how many messages each established session has sent.
func (s *Server) sentLocked() map[string]uint64 {
	out := map[string]uint64{}
	for _, in := range s.instances {
		if !in.started {
			continue
		}
		_ = in.bgp.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
			if p.GetState().GetSessionState() == api.PeerState_ESTABLISHED {
				out[p.GetConf().GetNeighborAddress()] = p.GetState().GetMessages().GetSent().GetTotal()
			}
		})
	}
	return out
}

// drainLocked waits, at most limit, until every session of before has sent more
// messages than it had then, and sends no more: the withdrawals queued are written.
func (s *Server) drainLocked(before map[string]uint64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	var last map[string]uint64
	for time.Now().Before(deadline) {
		now := s.sentLocked()
		done := true
		for peer, n := range before {
			if m, ok := now[peer]; ok && (m <= n || last[peer] != m) {
				done = false
			}
		}
		if done {
			return
		}
		last = now
		time.Sleep(2 * time.Millisecond)
	}
}

// lock waits until Run serves, then locks s.mu; it returns false, s.mu unlocked, when
// ctx ends first (with its error) or once Run is stopping (nil: nothing more to do).
func (s *Server) lock(ctx context.Context) (bool, error) {
	select {
	case <-s.serving:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return false, nil
	}
	return true, nil
}

// instanceLocked returns the instance presenting router ID id, making it if need be.
func (s *Server) instanceLocked(id netip.Addr) *instance {
	if in := s.instances[id]; in != nil {
		return in
	}
	var in *instance
	if n := len(s.spare); n > 0 {
		in, s.spare = s.spare[n-1], s.spare[:n-1]
		in.id = id
	} else {
		in = &instance{id: id, bgp: server.NewBgpServer(server.LoggerOption(&logAdapter{log: s.log}))}
		go in.bgp.Serve()
	}
	in.peers, in.paths = map[netip.Addr]bool{}, map[netip.Prefix]path{}
	s.instances[id] = in
	return in
}

// startLocked starts in's BGP on first use, with the first peer's local AS as the global
// AS (each session sets its own).
func (s *Server) startLocked(ctx context.Context, in *instance, asn uint32) error {
	if in.started {
		return nil
	}
	listen := int32(-1)
	if in.id == s.opts.RouterID {
		listen = s.opts.ListenPort
	}
	if err := in.bgp.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: asn, RouterId: in.id.String(), ListenPort: listen,
	}}); err != nil {
		return fmt.Errorf("start BGP (AS %d, router ID %s): %w", asn, in.id, err)
	}
	if err := in.bgp.WatchEvent(context.Background(), &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.onPeerEvent); err != nil {
		return fmt.Errorf("watch BGP sessions: %w", err)
	}
	in.started = true
	return nil
}

// stop closes in's sessions with a Cease and stops its BGP.
func (in *instance) stop() error {
	if !in.started {
		return nil
	}
	in.started = false
	if err := in.bgp.StopBgp(context.Background(), &api.StopBgpRequest{}); err != nil {
		return fmt.Errorf("stop BGP (router ID %s): %w", in.id, err)
	}
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
	peer, err := netip.ParseAddr(addr)
	if err != nil || s.opts.OnSession == nil {
		return
	}
	switch {
	case state == api.PeerState_ESTABLISHED && prev != state:
		s.opts.OnSession(bgp.SessionEvent{Peer: peer, State: bgp.Established})
	case prev == api.PeerState_ESTABLISHED && state != prev:
		s.opts.OnSession(bgp.SessionEvent{Peer: peer, State: bgp.Down})
	}
}

// onBFD follows the BFD sessions: one found failing takes its BGP session down at once
// (the path is gone; the hold timer would take seconds), which the router's own BFD has
// done on its side already. A peer's AdminDown is not a failure (RFC 5882 §3.2): the
// router re-creating its session says it, and BGP stays up.
//
// It runs on the BFD manager's worker for the peer, never on the goroutine that runs
// the BFD sessions, and takes no lock that SetRoutes or SetPeers hold across GoBGP calls:
// the reset waits, at most, for GoBGP to finish the call in progress.
func (s *Server) onBFD(c bfd.Change) {
	switch {
	case c.To == bfd.Up:
		if s.opts.OnSession != nil {
			s.opts.OnSession(bgp.SessionEvent{Peer: c.Peer, State: bgp.BFDUp})
		}
	case c.Failed():
		s.stateMu.Lock()
		in := s.resets[c.Peer]
		s.stateMu.Unlock()
		if in == nil {
			return
		}
		s.metrics.Resets.WithLabelValues(c.Peer.String(), "bfd_down").Inc()
		s.log.Warn("BFD session down: resetting the BGP session", "peer", c.Peer, "diag", c.Diag.String())
		if err := in.bgp.ResetPeer(context.Background(), &api.ResetPeerRequest{Address: c.Peer.String(), Communication: "BFD down: " + c.Diag.String()}); err != nil {
			s.log.Error("resetting the BGP session after BFD went down", "peer", c.Peer, "err", err)
		}
		if s.opts.OnSession != nil {
			s.opts.OnSession(bgp.SessionEvent{Peer: c.Peer, State: bgp.BFDDown, Reason: c.Diag.String()})
		}
	}
}

// routerID is the router ID p's session presents.
func (s *Server) routerID(p bgp.Peer) netip.Addr {
	if p.RouterID.IsValid() {
		return p.RouterID
	}
	return s.opts.RouterID
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
// settings changed is re-created. The BFD sessions follow.
func (s *Server) SetPeers(ctx context.Context, peers []bgp.Peer) error {
	if ok, err := s.lock(ctx); !ok {
		return err
	}
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
		in := s.instances[s.routerID(old)]
		if err := in.bgp.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("remove BGP peer %s: %w", addr, err))
			continue
		}
		delete(s.peers, addr)
		delete(in.peers, addr)
		s.stateMu.Lock()
		delete(s.resets, addr)
		s.stateMu.Unlock()
		s.metrics.SessionUp.DeleteLabelValues(addr.String())
		s.log.Info("BGP peer removed", "peer", addr)
	}
	for id, in := range s.instances {
		if len(in.peers) == 0 && id != s.opts.RouterID {
			// No session presents this router ID any more.
			if err := in.stop(); err != nil {
				errs = append(errs, err)
			}
			delete(s.instances, id)
			s.spare = append(s.spare, in)
		}
	}
	for _, p := range peers {
		if _, ok := s.peers[p.Address]; ok {
			continue
		}
		in := s.instanceLocked(s.routerID(p))
		if err := s.startLocked(ctx, in, p.MyASN); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.advertiseLocked(ctx, in); err != nil {
			errs = append(errs, err)
		}
		if err := in.bgp.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(p)}); err != nil {
			errs = append(errs, fmt.Errorf("add BGP peer %s (AS %d): %w", p.Address, p.ASN, err))
			continue
		}
		s.peers[p.Address] = p
		in.peers[p.Address] = true
		s.stateMu.Lock()
		s.conf[p.Address.String()] = p
		s.resets[p.Address] = in
		s.stateMu.Unlock()
		s.metrics.SessionUp.WithLabelValues(p.Address.String()).Set(0)
		s.log.Info("BGP peer added", "peer", p.Address, "peerASN", p.ASN, "myASN", p.MyASN, "routerID", in.id, "md5", p.Password != "", "bfd", p.BFD != bfd.Config{})
	}
	var sessions []udp.Peer
	for _, p := range s.peers {
		if p.BFD != (bfd.Config{}) {
			sessions = append(sessions, udp.Peer{Addr: p.Address, Config: p.BFD})
		}
	}
	if err := s.bfd.Set(sessions); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// BFD returns the state of every BFD session.
func (s *Server) BFD() []bfd.Status { return s.bfd.Sessions() }

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
			// After a reset (BFD down), try again in a second, not GoBGP's 30.
			IdleHoldTimeAfterReset: 1,
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
	if ok, err := s.lock(ctx); !ok {
		return err
	}
	defer s.mu.Unlock()
	s.routes = slices.Clone(routes)
	var errs []error
	for _, in := range s.instances {
		if err := s.advertiseLocked(ctx, in); err != nil {
			errs = append(errs, err)
		}
	}
	n := 0
	if in := s.instances[s.opts.RouterID]; in != nil {
		n = len(in.paths)
	} else {
		for _, in := range s.instances {
			n = max(n, len(in.paths))
		}
	}
	s.metrics.Routes.Set(float64(n))
	return errors.Join(errs...)
}

// advertiseLocked makes in advertise s.routes: it withdraws what is not among them and
// adds what is new or changed.
func (s *Server) advertiseLocked(ctx context.Context, in *instance) error {
	if !in.started {
		return nil // no peer presents this router ID yet: nothing to advertise to
	}
	want := map[netip.Prefix]bgp.Route{}
	for _, r := range s.routes {
		want[r.Prefix] = r
	}
	var errs []error
	for prefix, old := range in.paths {
		if r, ok := want[prefix]; ok && r.Equal(old.route) {
			continue
		}
		if err := in.bgp.DeletePath(ctx, &api.DeletePathRequest{Uuid: old.uuid}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", prefix, err))
			continue
		}
		delete(in.paths, prefix)
	}
	for _, r := range s.routes {
		if _, ok := in.paths[r.Prefix]; ok {
			continue
		}
		p, err := apiPath(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := in.bgp.AddPath(ctx, &api.AddPathRequest{Path: p})
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", r.Prefix, err))
			continue
		}
		in.paths[r.Prefix] = path{route: r, uuid: resp.GetUuid()}
	}
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
