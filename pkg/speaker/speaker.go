package speaker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/layer2"
	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/members"
	"github.com/heraldlb/herald/pkg/metrics"
	"github.com/heraldlb/herald/pkg/plan"
	"github.com/heraldlb/herald/pkg/runner"
)

// Layer2 is what the speaker needs of the layer-2 announcer.
type Layer2 interface {
	// Set replaces the addresses this node answers for.
	Set([]layer2.Address)
	// Reannounce sends the gratuitous burst again for every address answered, so that
	// neighbours that followed another node meanwhile come back.
	Reannounce()
}

// Members is what the speaker needs of the membership.
type Members interface {
	Alive() []string
	AliveMeta() map[string][]byte // by name: each member's MemberMeta, encoded
	Changed() <-chan struct{}
	SetMeta([]byte) error
}

var _ Members = (*members.Members)(nil)

// MemberMeta is what a speaker tells the others about itself through memberlist.
type MemberMeta struct {
	IPVS bool `json:"ipvs"` // the node's kernel can do IPVS: it may announce pools that forward
}

// Encode returns the metadata as memberlist carries it.
func (m MemberMeta) Encode() []byte {
	b, _ := json.Marshal(m) // a struct of plain fields always marshals
	return b
}

// Liveness is what the speaker needs of the failure detector (pkg/liveness): which
// members it found dead from its own connections, sooner than memberlist, and the
// handover when this speaker stops.
type Liveness interface {
	Dead() (map[string]liveness.Reason, uint64)
	Changed() <-chan struct{}
	Applied(gen uint64)
	Observe(alive []string)
	Alive() []string
	Leave(ctx context.Context)
}

var _ Liveness = (*liveness.Detector)(nil)

// Forwarder is what the speaker needs of the IPVS forwarder.
type Forwarder interface {
	Set([]forward.Service) error
	Resync()
}

// Options configure a Speaker.
type Options struct {
	Client   *k8s.Core // required
	NodeName string    // required: this node
	// Config names the admin's ConfigMap (default herald-system/config, key config); the
	// speaker runs the configuration the controller publishes beside it (Config.InForce).
	Config            k8s.ConfigRef
	LoadBalancerClass string      // default herald.dev/lb
	Layer2            Layer2      // required
	BGP               bgp.Speaker // nil: BGP off
	Members           Members     // nil: memberlist off, node Ready stands in
	// Liveness finds dead members sooner than memberlist; nil: memberlist alone.
	Liveness Liveness
	// HandoverTimeout bounds how long a stopping speaker waits for the others to take
	// its addresses over before it stops answering; default 1s.
	HandoverTimeout time.Duration
	// Forward programs IPVS beneath the addresses this node announces from pools that
	// forward; nil when the node cannot, and ForwardErr then says why (a log line, a
	// metric, an Event on the Node). A Forward whose Set fails with ipvs.ErrUnsupported
	// is given up the same way.
	Forward      Forwarder
	ForwardErr   error
	ResyncPeriod time.Duration // full resync; default 30s
	// JoinWait bounds how long, after start, a speaker whose memberlist has not joined
	// another speaker yet announces nothing (default 5s): alone, it would claim every
	// address, and a client would follow whichever node spoke last.
	JoinWait time.Duration
	// Backoff and MaxBackoff bound the retries of a failing sync; defaults 1s and 30s.
	Backoff, MaxBackoff time.Duration
	Clock               clock.WithDelayedExecution // default the real clock
	Logger              *slog.Logger
	Registerer          prometheus.Registerer
}

// Speaker runs the per-node loop.
type Speaker struct {
	opts    Options
	log     *slog.Logger
	events  *k8s.Events
	metrics *metrics.Speaker
	runner  *runner.Runner

	informers *k8s.Informers
	svcs      corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	nodeList  corelisters.NodeLister
	configs   *k8s.ConfigSource
	synced    []cache.InformerSynced

	// Touched only by sync (the runner's goroutine):
	seenConfig  string
	cfg         *config.Config
	announced   map[string]bool // "service ip" -> this node announces it
	noForwarder map[string]bool // Services told that no node can forward their pool
	refused     map[string]bool // "service ip" -> this node refuses its traffic (nowhere to send it)
	silent      map[string]bool // nodes whose speaker went silent, until heard again
	members     []string        // the live members of the last sync
	forward     Forwarder       // nil once the node cannot forward
	forwardErr  error

	started time.Time // when Run began following the cluster
	gen     uint64    // the generation of the liveness view of the last input
	ready   atomic.Bool
	leaving atomic.Bool // Run's context ended: routes are withdrawn first
	ownsMu  sync.Mutex
	ownsCfg *config.Config // the configuration Owns answers from
}

// New builds a Speaker; nothing runs before Run.
func New(opts Options) (*Speaker, error) {
	if opts.Client == nil || opts.NodeName == "" || opts.Layer2 == nil {
		return nil, errors.New("speaker: Client, NodeName and Layer2 are required")
	}
	opts.Config = opts.Config.WithDefaults()
	opts.LoadBalancerClass = cmp.Or(opts.LoadBalancerClass, k8s.DefaultLoadBalancerClass)
	opts.ResyncPeriod = cmp.Or(opts.ResyncPeriod, 30*time.Second)
	opts.JoinWait = cmp.Or(opts.JoinWait, 5*time.Second)
	opts.HandoverTimeout = cmp.Or(opts.HandoverTimeout, time.Second)
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	opts.Logger = logging.OrDiscard(opts.Logger)
	opts.Registerer = metrics.OrPrivate(opts.Registerer)
	s := &Speaker{
		opts: opts, log: opts.Logger,
		events:    k8s.NewEvents(opts.Client, k8s.ComponentSpeaker),
		metrics:   metrics.NewSpeaker(opts.Registerer),
		announced: map[string]bool{}, noForwarder: map[string]bool{}, refused: map[string]bool{}, silent: map[string]bool{},
		forward: opts.Forward, forwardErr: opts.ForwardErr,
	}
	if s.forward == nil && s.forwardErr == nil {
		s.forwardErr = errors.New("no forwarder")
	}
	s.runner = runner.New(runner.Options{
		Sync: s.sync, ResyncPeriod: opts.ResyncPeriod, Backoff: opts.Backoff, MaxBackoff: opts.MaxBackoff, Clock: opts.Clock,
		OnFailure: func(err error, in time.Duration) {
			s.log.Warn("desired state not fully applied; retrying in full", "err", err, "retryIn", in)
		},
		OnRecovery: func(n int) { s.log.Info("desired state applied after failures", "failures", n) },
	})
	// Only what the plan reads is kept of each object (k8s.Strip), and an update that
	// changes none of it (a node's heartbeat) does not wake the loop.
	s.informers = k8s.NewInformers(opts.Client, 0, k8s.Strip)
	svcInf := s.informers.For(&corev1.Service{}, "", nil)
	sliceInf := s.informers.For(&discoveryv1.EndpointSlice{}, "", nil)
	nodeInf := s.informers.For(&corev1.Node{}, "", nil)
	s.svcs = corelisters.NewServiceLister(svcInf.GetIndexer())
	s.slices = discoverylisters.NewEndpointSliceLister(sliceInf.GetIndexer())
	s.nodeList = corelisters.NewNodeLister(nodeInf.GetIndexer())
	s.configs = k8s.NewConfigSource(opts.Client, opts.Config.InForce(), 0)
	for _, inf := range []cache.SharedIndexInformer{svcInf, sliceInf, nodeInf, s.configs.Informer} {
		s.synced = append(s.synced, inf.HasSynced)
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { s.runner.Poke() },
			UpdateFunc: func(old, cur any) {
				if k8s.Changed(old, cur) {
					s.runner.Poke()
				}
			},
			DeleteFunc: func(any) { s.runner.Poke() },
		}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// NodeAddresses returns the InternalIP of every known node (for finding the other
// speakers); empty until the caches have synced.
func (s *Speaker) NodeAddresses() []netip.Addr {
	nodes, _ := s.nodeList.List(labels.Everything())
	var out []netip.Addr
	for _, n := range nodes {
		out = append(out, k8s.PlanNode(n).Addresses...)
	}
	return out
}

// Ready says whether the speaker is serving: caches synced, a configuration loaded, and
// memberlist started (when on).
func (s *Speaker) Ready() error {
	if !s.ready.Load() {
		return errors.New("caches not synced or no configuration in force yet")
	}
	if m, ok := s.opts.Members.(interface{ Started() bool }); ok && !m.Started() {
		return errors.New("memberlist not started yet")
	}
	return nil
}

// Run follows the cluster until ctx ends, then withdraws what it can.
func (s *Speaker) Run(ctx context.Context) error {
	s.events.Start()
	defer s.events.Shutdown()
	informCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.informers.Start(informCtx.Done())
	s.configs.Start(informCtx.Done())
	defer s.informers.Shutdown()
	defer s.configs.Shutdown()
	// Deferred last, so it runs first: the informers stop before the Shutdowns wait for
	// them, also when a panic unwinds (a crash restarts the speaker; a hang would not).
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return nil
	}
	s.reportForwarding()
	s.log.Info("speaker running", "canForward", s.forward != nil)
	var changed, died <-chan struct{}
	if s.opts.Members != nil {
		changed = s.opts.Members.Changed()
	}
	if s.opts.Liveness != nil {
		died = s.opts.Liveness.Changed()
	}
	s.started = s.opts.Clock.Now()
	joinWait := s.opts.Clock.AfterFunc(s.opts.JoinWait, s.runner.Poke)
	defer joinWait.Stop()
	loop, stopLoop := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoop()
	done := make(chan error, 1)
	go func() { done <- s.runner.Run(loop) }()
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-changed:
			s.runner.Poke()
		case <-died:
			s.runner.Poke()
		}
	}
	// BGP routes go first: every router holds the other nodes' paths, so withdrawing
	// ours moves the flows at once while this node still forwards what is in flight.
	s.leaving.Store(true)
	s.runner.Poke()
	if s.opts.Liveness != nil {
		// Make before break: the next owners announce before this node stops answering.
		// The loop keeps running meanwhile, so this node also acknowledges others.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.HandoverTimeout)
		s.opts.Liveness.Leave(hctx)
		cancel()
	}
	stopLoop()
	<-done
	s.shutdown()
	return nil
}

// shutdown withdraws, on the way out, the forwarding state (the other nodes have taken
// over by now) and says what this node no longer announces.
func (s *Speaker) shutdown() {
	if s.opts.BGP != nil {
		if err := s.opts.BGP.SetRoutes(context.Background(), nil); err != nil {
			s.log.Warn("withdrawing the BGP routes on shutdown", "err", err)
		}
	}
	if s.forward != nil && s.cfg != nil {
		if err := s.forward.Set(nil); err != nil {
			s.log.Warn("removing the forwarding state on shutdown", "err", err)
		}
	}
	s.report(plan.Desired{}, plan.Input{})
}

// SessionChanged records a BGP or BFD session going up or down as an Event on this
// node (the log line and the metric are the BGP speaker's). Sessions closing because
// this speaker stops are not news.
func (s *Speaker) SessionChanged(e bgp.SessionEvent) {
	if s.leaving.Load() {
		return
	}
	node, err := s.nodeList.Get(s.opts.NodeName)
	if err != nil {
		return
	}
	switch e.State {
	case bgp.Established:
		s.events.Eventf(node, corev1.EventTypeNormal, k8s.ReasonBGPSessionUp, "node %s: BGP session with %s established", s.opts.NodeName, e.Peer)
	case bgp.Down:
		s.events.Eventf(node, corev1.EventTypeWarning, k8s.ReasonBGPSessionDown, "node %s: BGP session with %s down", s.opts.NodeName, e.Peer)
	case bgp.BFDUp:
		s.events.Eventf(node, corev1.EventTypeNormal, k8s.ReasonBFDSessionUp, "node %s: BFD session with %s up", s.opts.NodeName, e.Peer)
	case bgp.BFDDown:
		s.events.Eventf(node, corev1.EventTypeWarning, k8s.ReasonBFDSessionDown, "node %s: BFD session with %s down (%s): BGP session reset", s.opts.NodeName, e.Peer, e.Reason)
	}
}

// reportForwarding says once whether this node can forward: a metric, and when it
// cannot, a log line and an Event on its Node.
func (s *Speaker) reportForwarding() {
	if s.forward != nil {
		s.metrics.CanForward.Set(1)
		return
	}
	s.metrics.CanForward.Set(0)
	s.log.Error("this node cannot forward with IPVS, so it announces no address of a pool that forwards", "err", s.forwardErr)
	if node, err := s.nodeList.Get(s.opts.NodeName); err == nil {
		s.events.Eventf(node, corev1.EventTypeWarning, k8s.ReasonIPVSUnavailable,
			"node %s cannot forward with IPVS, so it announces no address of a pool that forwards: %v", s.opts.NodeName, s.forwardErr)
	}
	if s.opts.Members != nil {
		if err := s.opts.Members.SetMeta(MemberMeta{IPVS: false}.Encode()); err != nil {
			s.log.Warn("telling the other speakers", "err", err)
		}
	}
}

// sync computes the desired state from the caches and applies it: layer 2, BGP,
// forwarding. full asks the adapters to compare with the world, not with what they last
// applied.
func (s *Speaker) sync(ctx context.Context, full bool) error {
	start := time.Now()
	defer func() { s.metrics.SyncSeconds.Observe(time.Since(start).Seconds()) }()
	s.loadConfig()
	in := s.input()
	d := s.compute(in)

	// Forwarding first: an address must be ready to take traffic before this node draws
	// it with a gratuitous ARP or a route (a SYN dropped meanwhile costs the client a
	// one-second retransmission).
	fwdErr := s.applyForwarding(d.Forward, full)
	if errors.Is(fwdErr, ipvs.ErrUnsupported) {
		s.forward, s.forwardErr, fwdErr = nil, fwdErr, nil
		s.reportForwarding()
		in = s.input()
		d = s.compute(in)
	}
	s.opts.Layer2.Set(d.Layer2)
	if s.members != nil && !slices.Equal(in.Members, s.members) {
		// Neighbours may have followed another node's announcement while the membership
		// changed: every owner says again what it keeps.
		s.opts.Layer2.Reannounce()
	}
	s.members = slices.Clip(append([]string{}, in.Members...))
	var errs []error
	if fwdErr != nil {
		errs = append(errs, fmt.Errorf("forwarding: %w", fwdErr))
	}
	if s.opts.BGP != nil {
		if err := s.opts.BGP.SetPeers(ctx, d.BGPPeers); err != nil {
			errs = append(errs, fmt.Errorf("BGP peers: %w", err))
		}
		if err := s.opts.BGP.SetRoutes(ctx, d.BGPRoutes); err != nil {
			errs = append(errs, fmt.Errorf("BGP routes: %w", err))
		}
	}
	s.report(d, in)
	if s.opts.Liveness != nil {
		s.opts.Liveness.Applied(s.gen) // what the view of gen asked is in force now
	}
	if s.cfg != nil {
		s.ready.Store(true)
	}
	s.metrics.Members.Set(float64(len(in.Members)))
	return errors.Join(errs...)
}

// compute is plan.Compute, except that a speaker that has not heard from any other yet
// (and has not waited JoinWait) announces nothing: alone, it would elect itself for every
// address and draw clients that the real owner then has to win back.
func (s *Speaker) compute(in plan.Input) plan.Desired {
	d := plan.Compute(in)
	if s.leaving.Load() {
		d.BGPRoutes = nil
	}
	if !in.UseMembers || len(in.Members) > 1 || s.opts.Clock.Since(s.started) >= s.opts.JoinWait || !s.othersExist(in.Nodes) {
		return d
	}
	return plan.Desired{BGPPeers: d.BGPPeers}
}

// othersExist reports whether another Ready node could run a speaker to join.
func (s *Speaker) othersExist(nodes []plan.Node) bool {
	return slices.ContainsFunc(nodes, func(n plan.Node) bool { return n.Name != s.opts.NodeName && n.Ready })
}

func (s *Speaker) input() plan.Input {
	in := plan.Input{Config: s.cfg, Self: s.opts.NodeName}
	if s.opts.Members != nil {
		in.UseMembers, in.Members = true, s.opts.Members.Alive()
		if s.opts.Liveness != nil {
			// Alive: what memberlist says, and every peer heard on its own connection (a
			// healed partition, before memberlist merges again), less those this
			// speaker found dead itself.
			s.opts.Liveness.Observe(in.Members)
			var dead map[string]liveness.Reason
			dead, s.gen = s.opts.Liveness.Dead()
			for _, m := range s.opts.Liveness.Alive() {
				if !slices.Contains(in.Members, m) {
					in.Members = append(in.Members, m)
				}
			}
			in.Members = slices.DeleteFunc(in.Members, func(m string) bool { _, d := dead[m]; return d && m != s.opts.NodeName })
			slices.Sort(in.Members)
			in.Silent = s.silentNodes(dead, in.Members)
		}
	}
	in.Nodes = s.nodes()
	in.Services = s.services()
	in.Forwarders = s.forwarders(in.Nodes)
	return in
}

// silentNodes returns the nodes whose speaker went silent (plan.Input.Silent), from the
// failure detector's dead members and the live ones: a member found dead for its silence
// (a dead or cut-off node) counts, and stays counted after memberlist drops it (the
// detector then forgets it) until it is alive again. A speaker that crashed (its
// connection closed, its port refused) or left runs on a node that still forwards: it
// never counts. Without the detector there are none: memberlist alone cannot tell a
// crashed speaker from a dead node.
func (s *Speaker) silentNodes(dead map[string]liveness.Reason, alive []string) map[string]bool {
	for name, why := range dead {
		if why == liveness.Silent {
			s.silent[name] = true
		} else {
			delete(s.silent, name)
		}
	}
	for _, m := range alive {
		delete(s.silent, m)
	}
	delete(s.silent, s.opts.NodeName)
	return maps.Clone(s.silent)
}

// loadConfig takes the configuration in force when it changed and parses; otherwise the
// last good one stays.
func (s *Speaker) loadConfig() {
	_, text, err := s.configs.Get()
	if err != nil || text == s.seenConfig {
		return // missing: keep what is in force
	}
	s.seenConfig = text
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		s.metrics.ConfigStale.Set(1)
		s.log.Error("the configuration in force does not parse; the last good one stays", "configMap", s.opts.Config.InForce().String(), "err", err)
		return
	}
	s.cfg = cfg
	s.ownsMu.Lock()
	s.ownsCfg = cfg
	s.ownsMu.Unlock()
	s.metrics.ConfigStale.Set(0)
	hash := config.Hash([]byte(text))
	s.metrics.InForce.Set(hash)
	s.log.Info("configuration loaded", "pools", len(cfg.Pools), "hash", hash)
}

// applyForwarding hands the forwarder the whole desired set.
func (s *Speaker) applyForwarding(fwd []forward.Service, full bool) error {
	if s.forward == nil || s.cfg == nil {
		return nil
	}
	if full {
		s.forward.Resync()
	}
	return s.forward.Set(fwd)
}

// Owns reports whether addr is in a pool of the configuration in force: the only
// addresses the forwarder may touch.
func (s *Speaker) Owns(addr netip.Addr) bool {
	s.ownsMu.Lock()
	defer s.ownsMu.Unlock()
	_, ok := s.ownsCfg.PoolOf(addr)
	return ok
}

// forwarders are the nodes that can forward: from memberlist's metadata (this node's
// own included: it changes its metadata when it finds it cannot forward); without
// memberlist nothing tells what the other nodes' kernels can do, so they are taken to
// be able, and this node says for itself.
func (s *Speaker) forwarders(nodes []plan.Node) map[string]bool {
	out := map[string]bool{}
	if s.opts.Members != nil {
		for name, raw := range s.opts.Members.AliveMeta() {
			var m MemberMeta
			if json.Unmarshal(raw, &m) == nil && m.IPVS {
				out[name] = true
			}
		}
		// This node too, as the others see it, so that every speaker elects alike.
		return out
	}
	for _, n := range nodes {
		out[n.Name] = true
	}
	out[s.opts.NodeName] = s.forward != nil
	return out
}

func (s *Speaker) nodes() []plan.Node {
	list, _ := s.nodeList.List(labels.Everything())
	out := make([]plan.Node, 0, len(list))
	for _, n := range list {
		out = append(out, k8s.PlanNode(n))
	}
	return out
}

func (s *Speaker) services() []plan.Service {
	svcs, _ := s.svcs.List(labels.Everything())
	slices.SortFunc(svcs, func(a, b *corev1.Service) int { return cmp.Compare(k8s.Key(a), k8s.Key(b)) })
	slicesLister := s.slices
	var out []plan.Service
	for _, svc := range svcs {
		ips := k8s.IngressIPs(svc)
		if !k8s.Manages(svc, s.opts.LoadBalancerClass) || len(ips) == 0 {
			continue
		}
		eps, _ := slicesLister.EndpointSlices(svc.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
		out = append(out, k8s.PlanService(svc, ips, eps))
	}
	return out
}

// report records, on change only, which Service addresses this node took or gave up,
// and, from one speaker only (the first live one by name), the Services whose pool
// forwards while no live node can.
func (s *Speaker) report(d plan.Desired, in plan.Input) {
	now := map[string]bool{}
	svcLister := s.svcs
	say := func(svcKey string, a k8s.Announcement) {
		s.metrics.OwnershipChanges.Inc()
		if a.Announcing {
			s.log.Info("announcing", "service", svcKey, "ip", a.IP, "mode", a.Mode)
		} else {
			s.log.Info("stopped announcing", "service", svcKey, "ip", a.IP)
		}
		if svc := getService(svcLister, svcKey); svc != nil {
			s.events.Event(svc, corev1.EventTypeNormal, a.Reason(), a.Message())
		}
	}
	for _, dec := range d.Decisions {
		if !dec.Announce {
			continue
		}
		key := dec.Service + " " + dec.IP.String()
		now[key] = true
		if !s.announced[key] {
			say(dec.Service, k8s.Announcement{Node: s.opts.NodeName, IP: dec.IP, Mode: dec.Protocol.String(), Announcing: true})
		}
	}
	for _, key := range slices.Sorted(maps.Keys(s.announced)) {
		if !now[key] {
			svcKey, ip, _ := strings.Cut(key, " ")
			say(svcKey, k8s.Announcement{Node: s.opts.NodeName, IP: netip.MustParseAddr(ip)})
		}
	}
	s.announced = now
	s.reportRefused(d, in)
	s.reportNoForwarder(d, in)
}

// reportRefused warns, once for as long as it lasts, on each Service address whose
// traffic this node refuses because it has nowhere to send it.
func (s *Speaker) reportRefused(d plan.Desired, in plan.Input) {
	now := map[string]bool{}
	svcLister := s.svcs
	for _, dec := range d.Decisions {
		if !dec.Refused {
			continue
		}
		key := dec.Service + " " + dec.IP.String()
		now[key] = true
		if s.refused[key] {
			continue
		}
		mode := config.ForwardingIPVS
		if pool, ok := in.Config.Pool(dec.Pool); ok {
			mode = pool.Forwarding()
		}
		s.log.Warn("no ready endpoint on a live node: the Service's traffic is refused", "service", dec.Service, "ip", dec.IP, "pool", dec.Pool)
		if svc := getService(svcLister, dec.Service); svc != nil {
			s.events.Eventf(svc, corev1.EventTypeWarning, k8s.ReasonNoLiveEndpoints,
				"node %s refuses traffic to %s (TCP reset, ICMP port unreachable): the Service has no ready endpoint on a live node to send it to (pool %q, forwarding: %s)",
				s.opts.NodeName, dec.IP, dec.Pool, mode)
		}
	}
	for key := range s.refused {
		if !now[key] {
			svcKey, ip, _ := strings.Cut(key, " ")
			s.log.Info("the Service's traffic is no longer refused", "service", svcKey, "ip", ip)
		}
	}
	s.refused = now
}

// reportNoForwarder warns on each Service of a pool that forwards, once for as long as
// no live node can forward (recorded by the first live speaker by name, so once).
func (s *Speaker) reportNoForwarder(d plan.Desired, in plan.Input) {
	if in.Config == nil || len(in.Members) == 0 || in.Members[0] != s.opts.NodeName {
		return
	}
	anyForwarder := false
	for _, m := range in.Members {
		anyForwarder = anyForwarder || in.Forwarders[m]
	}
	now := map[string]bool{}
	if !anyForwarder {
		svcLister := s.svcs
		for _, dec := range d.Decisions {
			pool, ok := in.Config.Pool(dec.Pool)
			if !ok || !pool.Forward || now[dec.Service] {
				continue
			}
			now[dec.Service] = true
			if s.noForwarder[dec.Service] {
				continue
			}
			if svc := getService(svcLister, dec.Service); svc != nil {
				s.events.Eventf(svc, corev1.EventTypeWarning, k8s.ReasonNoNodeCanForward,
					"no node can forward with IPVS, so nobody announces %s: pool %q forwards (forwarding: %s); load ip_vs on the nodes or set forwarding: none", dec.IP, pool.Name, pool.Forwarding())
			}
			s.log.Warn("no node can forward: the Service's address is not announced", "service", dec.Service, "ip", dec.IP, "pool", pool.Name)
		}
	}
	s.noForwarder = now
}

func getService(l corelisters.ServiceLister, key string) *corev1.Service {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := l.Services(ns).Get(name)
	if err != nil {
		return nil
	}
	return svc
}
