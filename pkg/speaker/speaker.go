package speaker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
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
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/layer2"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/members"
	"github.com/heraldlb/herald/pkg/metrics"
	"github.com/heraldlb/herald/pkg/plan"
)

// Layer2 is what the speaker needs of the layer-2 announcer.
type Layer2 interface {
	SetOwned([]layer2.Owned)
}

var _ Layer2 = (*layer2.Announcer)(nil)

// Members is what the speaker needs of the membership.
type Members interface {
	Alive() []string
	AliveMeta() map[string][]byte // by name: each member's MemberMeta, encoded
	Changed() <-chan struct{}
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

// Forwarder is what the speaker needs of the IPVS forwarder.
type Forwarder interface {
	Set([]forward.Service) error
	Resync()
}

var _ Forwarder = (*forward.Forwarder)(nil)

// Options configure a Speaker.
type Options struct {
	Client            kubernetes.Interface // required
	NodeName          string               // required: this node
	Config            k8s.ConfigRef        // default herald-system/config, key config
	LoadBalancerClass string               // default herald.dev/lb
	Layer2            Layer2               // required
	BGP               bgp.Speaker          // nil: BGP off
	Members           Members              // nil: memberlist off, node Ready stands in
	// Forward programs IPVS beneath the addresses this node announces from pools that
	// forward; nil when the node cannot, and ForwardErr then says why (reported as an
	// Event on the Node).
	Forward      Forwarder
	ForwardErr   error
	ResyncPeriod time.Duration // default 30s
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

// Speaker runs the per-node loop.
type Speaker struct {
	opts    Options
	log     *slog.Logger
	events  *k8s.Events
	metrics *metrics.Speaker
	trigger chan struct{}

	factory informers.SharedInformerFactory
	configs *k8s.ConfigSource
	synced  []cache.InformerSynced

	seenConfig string
	cfg        *config.Config
	announced  map[string]bool // "service ip" -> this node announces it
	resyncFwd  bool            // compare the forwarding state with the kernel in full next time

	mu       sync.Mutex
	last     plan.Desired
	ready    atomic.Bool
	retrying atomic.Bool // a sync is scheduled after a failed application
}

// New builds a Speaker; nothing runs before Run.
func New(opts Options) (*Speaker, error) {
	if opts.Client == nil || opts.NodeName == "" || opts.Layer2 == nil {
		return nil, errors.New("speaker: Client, NodeName and Layer2 are required")
	}
	opts.Config = opts.Config.WithDefaults()
	opts.LoadBalancerClass = cmp.Or(opts.LoadBalancerClass, k8s.DefaultLoadBalancerClass)
	opts.ResyncPeriod = cmp.Or(opts.ResyncPeriod, 30*time.Second)
	opts.Logger = logging.OrDiscard(opts.Logger)
	opts.Registerer = metrics.OrPrivate(opts.Registerer)
	s := &Speaker{
		opts: opts, log: opts.Logger, trigger: make(chan struct{}, 1),
		events:    k8s.NewEvents(opts.Client, "herald-speaker"),
		metrics:   metrics.NewSpeaker(opts.Registerer),
		announced: map[string]bool{},
	}
	s.factory = informers.NewSharedInformerFactory(opts.Client, 0)
	s.configs = k8s.NewConfigSource(opts.Client, opts.Config, 0)
	for _, inf := range []cache.SharedIndexInformer{
		s.factory.Core().V1().Services().Informer(),
		s.factory.Discovery().V1().EndpointSlices().Informer(),
		s.factory.Core().V1().Nodes().Informer(),
		s.configs.Informer,
	} {
		s.synced = append(s.synced, inf.HasSynced)
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { s.poke() },
			UpdateFunc: func(any, any) { s.poke() },
			DeleteFunc: func(any) { s.poke() },
		}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// NodeAddresses returns the InternalIP of every known node (for finding the other
// speakers); empty until the caches have synced.
func (s *Speaker) NodeAddresses() []netip.Addr {
	nodes, _ := s.factory.Core().V1().Nodes().Lister().List(labels.Everything())
	var out []netip.Addr
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if ip, err := netip.ParseAddr(a.Address); err == nil {
					out = append(out, ip)
				}
			}
		}
	}
	return out
}

// Ready says whether the speaker is serving: caches synced, a configuration loaded, and
// memberlist started (when on).
func (s *Speaker) Ready() error {
	if !s.ready.Load() {
		return errors.New("caches not synced or no configuration loaded yet")
	}
	if m, ok := s.opts.Members.(interface{ Started() bool }); ok && !m.Started() {
		return errors.New("memberlist not started yet")
	}
	return nil
}

// Last returns the last desired state computed.
func (s *Speaker) Last() plan.Desired {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *Speaker) poke() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Run follows the cluster until ctx ends.
func (s *Speaker) Run(ctx context.Context) error {
	s.events.Start()
	defer s.events.Shutdown()
	ctx, cancel := context.WithCancel(ctx)
	s.factory.Start(ctx.Done())
	s.configs.Start(ctx.Done())
	defer s.factory.Shutdown()
	defer s.configs.Shutdown()
	// Deferred last, so it runs first: the informers stop before the Shutdowns wait for
	// them, also when a panic unwinds (a crash restarts the speaker; a hang would not).
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return nil
	}
	var changed <-chan struct{}
	if s.opts.Members != nil {
		changed = s.opts.Members.Changed()
	}
	resync := time.NewTicker(s.opts.ResyncPeriod)
	defer resync.Stop()
	s.reportForwarding()
	s.log.Info("speaker running", "node", s.opts.NodeName, "canForward", s.opts.Forward != nil)
	for {
		s.sync(ctx)
		select {
		case <-ctx.Done():
			// Withdrawn everywhere: no trace of the addresses stays in IPVS or on herald0.
			if s.opts.Forward != nil && s.cfg != nil {
				if err := s.opts.Forward.Set(nil); err != nil {
					s.log.Warn("removing the forwarding state on shutdown", "err", err)
				}
			}
			s.report(plan.Desired{}) // say what this node no longer announces, as far as it can
			return nil
		case <-s.trigger:
		case <-changed:
		case <-resync.C:
			s.resyncFwd = true
		}
	}
}

// reportForwarding says, once at start, whether this node can forward: a metric, and
// when it cannot, an Event on its Node (the log line is the caller's).
func (s *Speaker) reportForwarding() {
	if s.opts.Forward != nil {
		s.metrics.CanForward.Set(1)
		return
	}
	s.metrics.CanForward.Set(0)
	if s.opts.ForwardErr == nil {
		return
	}
	node, err := s.factory.Core().V1().Nodes().Lister().Get(s.opts.NodeName)
	if err != nil {
		return
	}
	s.events.Recorder.Eventf(node, corev1.EventTypeWarning, "IPVSUnavailable",
		"node %s cannot forward with IPVS, so it announces no address of a pool that forwards: %v", s.opts.NodeName, s.opts.ForwardErr)
}

// sync computes the desired state from the caches and applies it.
func (s *Speaker) sync(ctx context.Context) {
	start := time.Now()
	s.loadConfig()
	in := plan.Input{Config: s.cfg, Self: s.opts.NodeName}
	if s.opts.Members != nil {
		in.UseMembers, in.Members = true, s.opts.Members.Alive()
	}
	in.Nodes = s.nodes()
	in.Services = s.services()
	in.Forwarders = s.forwarders(in.Nodes)
	d := plan.Compute(in)
	// Forwarding first: an address must be ready to take traffic before this node draws
	// it with a gratuitous ARP or a route (a SYN dropped meanwhile costs the client a
	// one-second retransmission). The full comparison with the kernel comes last, so that
	// it never delays an announcement.
	fwd := forwardServices(d.Forward)
	s.applyForwarding(fwd)
	owned := make([]layer2.Owned, len(d.Layer2))
	for i, l := range d.Layer2 {
		owned[i] = layer2.Owned{IP: l.IP, Interfaces: l.Interfaces}
	}
	s.opts.Layer2.SetOwned(owned)
	if s.opts.BGP != nil {
		if err := s.opts.BGP.SetPeers(ctx, d.BGPPeers); err != nil {
			s.log.Warn("BGP peers", "err", err)
		}
		if err := s.opts.BGP.SetRoutes(ctx, d.BGPRoutes); err != nil {
			s.log.Warn("BGP routes", "err", err)
		}
	}
	if s.resyncFwd && s.opts.Forward != nil {
		s.resyncFwd = false
		s.opts.Forward.Resync()
		s.applyForwarding(fwd)
	}
	s.report(d)
	s.mu.Lock()
	s.last = d
	s.mu.Unlock()
	if s.cfg != nil {
		s.ready.Store(true)
	}
	s.metrics.SyncSeconds.Observe(time.Since(start).Seconds())
	s.metrics.Members.Set(float64(len(in.Members)))
}

// loadConfig takes a new configuration when it parses; otherwise the last good one stays.
func (s *Speaker) loadConfig() {
	_, text, err := s.configs.Get()
	if err != nil || text == s.seenConfig {
		return // missing: keep what is in force
	}
	s.seenConfig = text
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		s.metrics.ConfigStale.Set(1)
		s.log.Error("configuration refused; the last good one stays in force", "configMap", s.opts.Config.String(), "err", err)
		return
	}
	s.cfg = cfg
	s.metrics.ConfigStale.Set(0)
	s.log.Info("configuration loaded", "pools", len(cfg.Pools))
}

// applyForwarding hands the forwarder the whole desired set; a failure is retried, in
// full, a second later.
func (s *Speaker) applyForwarding(fwd []forward.Service) {
	if s.opts.Forward == nil || s.cfg == nil {
		return
	}
	if err := s.opts.Forward.Set(fwd); err != nil {
		s.log.Warn("forwarding state not fully applied; retried in full in a second", "err", err)
		if s.retrying.CompareAndSwap(false, true) {
			time.AfterFunc(time.Second, func() { s.retrying.Store(false); s.poke() })
		}
	}
}

// Owns reports whether addr is in a pool of the configuration in force: the only
// addresses the forwarder may touch. Called from within sync.
func (s *Speaker) Owns(addr netip.Addr) bool {
	_, ok := s.cfg.PoolOf(addr)
	return ok
}

// forwarders are the nodes that can forward: from memberlist's metadata; without
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
		return out
	}
	for _, n := range nodes {
		out[n.Name] = true
	}
	out[s.opts.NodeName] = s.opts.Forward != nil
	return out
}

// forwardServices turns the plan's virtual services into the forwarder's.
func forwardServices(fs []plan.Forward) []forward.Service {
	out := make([]forward.Service, 0, len(fs))
	for _, f := range fs {
		fw := forward.Service{
			VIP: f.VIP, Port: f.Port, Proto: forward.TCP, Scheduler: f.Scheduler, Persistence: f.Persistence,
			SourceRanges: f.SourceRanges, Masquerade: f.Masquerade,
		}
		switch corev1.Protocol(f.Proto) {
		case corev1.ProtocolUDP:
			fw.Proto = forward.UDP
		case corev1.ProtocolSCTP:
			fw.Proto = forward.SCTP
		}
		for _, r := range f.RealServers {
			fw.RealServers = append(fw.RealServers, forward.RealServer{Addr: r.Addr, Port: r.Port})
		}
		out = append(out, fw)
	}
	return out
}

func (s *Speaker) nodes() []plan.Node {
	list, _ := s.factory.Core().V1().Nodes().Lister().List(labels.Everything())
	out := make([]plan.Node, 0, len(list))
	for _, n := range list {
		out = append(out, k8s.PlanNode(n))
	}
	return out
}

func (s *Speaker) services() []plan.Service {
	svcs, _ := s.factory.Core().V1().Services().Lister().List(labels.Everything())
	slices.SortFunc(svcs, func(a, b *corev1.Service) int { return cmp.Compare(k8s.Key(a), k8s.Key(b)) })
	slicesLister := s.factory.Discovery().V1().EndpointSlices().Lister()
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

// report records, on change only, which Service addresses this node took or gave up.
func (s *Speaker) report(d plan.Desired) {
	now := map[string]bool{}
	svcLister := s.factory.Core().V1().Services().Lister()
	for _, dec := range d.Decisions {
		if !dec.Announce {
			continue
		}
		key := dec.Service + " " + dec.IP.String()
		now[key] = true
		if s.announced[key] {
			continue
		}
		s.metrics.OwnershipChanges.Inc()
		s.log.Info("announcing", "service", dec.Service, "ip", dec.IP, "mode", dec.Protocol.String())
		if svc := getService(svcLister, dec.Service); svc != nil {
			s.events.Recorder.Eventf(svc, corev1.EventTypeNormal, "Announcing", "node %s announces %s (%s)", s.opts.NodeName, dec.IP, dec.Protocol)
		}
	}
	for key := range s.announced {
		if now[key] {
			continue
		}
		s.metrics.OwnershipChanges.Inc()
		svcKey, ip, _ := strings.Cut(key, " ")
		s.log.Info("stopped announcing", "service", svcKey, "ip", ip)
		if svc := getService(svcLister, svcKey); svc != nil {
			s.events.Recorder.Eventf(svc, corev1.EventTypeNormal, "StoppedAnnouncing", "node %s no longer announces %s", s.opts.NodeName, ip)
		}
	}
	s.announced = now
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
