package speaker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
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
	Forward    Forwarder
	ForwardErr error
	// Relay hands flows of Local Services on to other nodes (relay-local); nil when this
	// node cannot, and RelayErr then says why (logged when the plan asks for it).
	Relay        Relayer
	RelayErr     error
	ResyncPeriod time.Duration // full resync; default 30s
	// JoinWait bounds how long, after start, a speaker whose memberlist has not joined
	// another speaker yet announces nothing (default 5s): alone, it would claim every
	// address, and a client would follow whichever node spoke last.
	JoinWait time.Duration
	// ForwardWait bounds how long layer 2 waits, before it answers for a new set of
	// addresses, for the forwarder to have tried the matching forwarding state; default
	// DefaultForwardWait. See doc.go for the trade.
	ForwardWait time.Duration
	// Backoff and MaxBackoff bound the retries of each part that fails, on its own;
	// defaults 1s and 30s.
	Backoff, MaxBackoff time.Duration
	Clock               clock.WithDelayedExecution // default the real clock
	Logger              *slog.Logger
	Registerer          prometheus.Registerer
}

// Speaker runs the per-node loop: a planner and one runner per part (see doc.go).
type Speaker struct {
	opts    Options
	log     *slog.Logger
	events  *k8s.Events
	metrics *metrics.Speaker

	informers *k8s.Informers
	svcs      corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	nodeList  corelisters.NodeLister
	configs   *k8s.ConfigSource
	synced    []cache.InformerSynced

	// The planner computes snapshots and publishes the newest in latest; every part
	// takes the newest when its runner next syncs.
	planner *runner.Runner
	latest  atomic.Pointer[snapshot]
	plan    planState
	layer2  layer2Part
	forward forwardPart
	bgp     bgpPart
	relay   relayPart
	status  reportPart

	started time.Time // when Run began following the cluster; set before the runners start
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
	opts.ForwardWait = cmp.Or(opts.ForwardWait, DefaultForwardWait)
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	opts.Logger = logging.OrDiscard(opts.Logger)
	opts.Registerer = metrics.OrPrivate(opts.Registerer)
	s := &Speaker{
		opts: opts, log: opts.Logger,
		events:  k8s.NewEvents(opts.Client, k8s.ComponentSpeaker),
		metrics: metrics.NewSpeaker(opts.Registerer),
	}
	s.forward.init(opts.Forward, opts.ForwardErr)
	s.relay.progress.changed = make(chan struct{})
	s.status.init()
	s.planner = s.newRunner("plan", s.syncPlan)
	s.layer2.runner = s.newRunner("layer2", s.syncLayer2)
	s.forward.runner = s.newRunner("forwarding", s.syncForward)
	s.bgp.runner = s.newRunner("bgp", s.syncBGP)
	s.relay.runner = s.newRunner("relay", s.syncRelay)
	s.status.runner = s.newRunner("status", s.syncReport)
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
			AddFunc: func(any) { s.planner.Poke() },
			UpdateFunc: func(old, cur any) {
				if k8s.Changed(old, cur) {
					s.planner.Poke()
				}
			},
			DeleteFunc: func(any) { s.planner.Poke() },
		}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// newRunner returns the runner of one part, retrying it on its own backoff and saying
// which part fails.
func (s *Speaker) newRunner(part string, sync func(context.Context, bool) error) *runner.Runner {
	failing := s.metrics.PartFailing.WithLabelValues(part)
	return runner.New(runner.Options{
		Sync: sync, ResyncPeriod: s.opts.ResyncPeriod, Backoff: s.opts.Backoff, MaxBackoff: s.opts.MaxBackoff, Clock: s.opts.Clock,
		OnFailure: func(err error, in time.Duration) {
			failing.Set(1)
			s.log.Warn("part of the desired state not applied; retrying that part in full", "part", part, "err", err, "retryIn", in)
		},
		OnRecovery: func(n int) {
			failing.Set(0)
			s.log.Info("part of the desired state applied after failures", "part", part, "failures", n)
		},
	})
}

// parts are the runners that apply the plan, each on its own.
func (s *Speaker) parts() []*runner.Runner {
	return []*runner.Runner{s.layer2.runner, s.forward.runner, s.bgp.runner, s.relay.runner, s.status.runner}
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

// Ready says whether the speaker is serving: caches synced, a configuration loaded and
// applied to layer 2, and memberlist started (when on).
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
	s.log.Info("speaker running", "canForward", s.forward.can.Load())
	var changed, died <-chan struct{}
	if s.opts.Members != nil {
		changed = s.opts.Members.Changed()
	}
	if s.opts.Liveness != nil {
		died = s.opts.Liveness.Changed()
	}
	s.started = s.opts.Clock.Now()
	joinWait := s.opts.Clock.AfterFunc(s.opts.JoinWait, s.planner.Poke)
	defer joinWait.Stop()
	loop, stopLoop := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoop()
	stopped := map[*runner.Runner]chan struct{}{}
	for _, r := range append(s.parts(), s.planner) {
		done := make(chan struct{})
		stopped[r] = done
		go func() { defer close(done); _ = r.Run(loop) }() // Run returns nil once loop ends
	}
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-changed:
			s.planner.Poke()
		case <-died:
			s.planner.Poke()
		}
	}
	// BGP routes go first: every router holds the other nodes' paths, so withdrawing
	// ours moves the flows at once while this node still forwards what is in flight.
	s.leaving.Store(true)
	s.planner.Poke()
	if s.opts.Liveness != nil {
		// Make before break: the next owners announce before this node stops answering.
		// The runners keep running meanwhile, so this node also acknowledges others.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.HandoverTimeout)
		s.opts.Liveness.Leave(hctx)
		cancel()
	}
	stopLoop()
	// A part stuck in its I/O (a forwarder whose kernel does not answer) does not keep
	// the others, nor this node's announcements, past shutdownTimeout: Run returns and the
	// process stops answering, and that part's own withdrawal is skipped.
	deadline := time.NewTimer(shutdownTimeout)
	defer deadline.Stop()
	expired := false
	ended := func(r *runner.Runner) bool {
		select {
		case <-stopped[r]:
			return true
		default:
		}
		if expired {
			return false
		}
		select {
		case <-stopped[r]:
			return true
		case <-deadline.C:
			expired = true // the others are only checked from now on
			return false
		}
	}
	s.shutdown(ended)
	return nil
}

// shutdown withdraws, on the way out, the BGP routes, then the forwarding state (the
// other nodes have taken over by now), and says what this node no longer announces.
// Each step waits for its part's runner to end (ended, bounded in all by
// shutdownTimeout), and is skipped when it did not: nothing else touches that part then.
// Each step is bounded, so a hung BGP process does not keep the forwarding state in
// place.
func (s *Speaker) shutdown(ended func(*runner.Runner) bool) {
	for _, r := range []*runner.Runner{s.planner, s.layer2.runner} {
		if !ended(r) {
			s.log.Warn("a part did not stop in time on shutdown", "part", s.partName(r))
		}
	}
	if s.opts.BGP != nil && !ended(s.bgp.runner) {
		s.log.Warn("the BGP part did not stop in time on shutdown: its routes are not withdrawn")
	} else if s.opts.BGP != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if err := s.opts.BGP.SetRoutes(ctx, nil); err != nil {
			s.log.Warn("withdrawing the BGP routes on shutdown", "err", err)
		}
		cancel()
	}
	if !ended(s.forward.runner) || !ended(s.planner) {
		s.log.Warn("the forwarding part did not stop in time on shutdown: its state stays in the kernel")
	} else if s.forward.fwd != nil && s.plan.cfg != nil {
		if err := s.forward.fwd.Set(nil); err != nil {
			s.log.Warn("removing the forwarding state on shutdown", "err", err)
		}
	}
	if !ended(s.relay.runner) {
		s.log.Warn("the relay part did not stop in time on shutdown: its state stays in the kernel")
	} else if s.opts.Relay != nil {
		if err := s.opts.Relay.Set(nil); err != nil {
			s.log.Warn("removing the relay state on shutdown", "err", err)
		}
	}
	if ended(s.status.runner) {
		s.report(plan.Desired{}, plan.Input{})
	}
}

// partName names a runner in the log.
func (s *Speaker) partName(r *runner.Runner) string {
	switch r {
	case s.planner:
		return "plan"
	case s.layer2.runner:
		return "layer2"
	case s.forward.runner:
		return "forwarding"
	case s.bgp.runner:
		return "bgp"
	case s.relay.runner:
		return "relay"
	}
	return "status"
}

// shutdownTimeout bounds the withdrawal of the BGP routes on the way out.
const shutdownTimeout = 5 * time.Second

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

// Owns reports whether addr is in a pool of the configuration in force: the only
// addresses the forwarder may touch.
func (s *Speaker) Owns(addr netip.Addr) bool {
	s.ownsMu.Lock()
	defer s.ownsMu.Unlock()
	_, ok := s.ownsCfg.PoolOf(addr)
	return ok
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
