package controller

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
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/ipam"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// Options configure a Controller. Zero values take the defaults noted.
type Options struct {
	Client kubernetes.Interface // required
	// Config names the ConfigMap key holding the configuration; default
	// herald-system/config, key config.
	Config k8s.ConfigRef
	// LoadBalancerClass is the class Herald serves besides none; default herald.dev/lb.
	LoadBalancerClass string
	// WatchNamespace limits the controller to Services of one namespace; "" means all.
	WatchNamespace string
	Workers        int                   // parallel syncs; default 8
	ResyncPeriod   time.Duration         // full re-sync; default 10m
	Logger         *slog.Logger          // nil discards
	Registerer     prometheus.Registerer // nil registers nowhere
}

// configKey is the work-queue key for the ConfigMap; it cannot be a Service key, as
// namespace and Service names never contain a colon.
const configKey = "::config"

// Controller assigns addresses to Services.
type Controller struct {
	opts    Options
	log     *slog.Logger
	core    *k8s.Core // package k8s's helpers, over the clientset's connections
	events  *k8s.Events
	metrics *metrics.Controller
	queue   workqueue.TypedRateLimitingInterface[string]

	svcFactory  informers.SharedInformerFactory
	svcInformer cache.SharedIndexInformer
	svcLister   corelisters.ServiceLister
	configs     *k8s.ConfigSource
	inForceSrc  *k8s.ConfigSource // the configuration this controller published as in force

	seenConfig *string // the ConfigMap text last handled; touched only by the config sync

	mu       sync.Mutex
	alloc    *ipam.Allocator // nil until a configuration is accepted
	cfg      *config.Config
	inForce  string                       // the text of cfg
	pending  map[string]bool              // Services waiting for an address
	reported map[string]map[string]string // per Service, per kind of problem: the last one recorded as an Event

	ready atomic.Bool
}

// New builds a Controller. It starts nothing: call Run.
func New(opts Options) (*Controller, error) {
	if opts.Client == nil {
		return nil, errors.New("controller: Options.Client is required")
	}
	opts.Config = opts.Config.WithDefaults()
	opts.LoadBalancerClass = cmp.Or(opts.LoadBalancerClass, k8s.DefaultLoadBalancerClass)
	opts.Workers = cmp.Or(opts.Workers, 8)
	opts.ResyncPeriod = cmp.Or(opts.ResyncPeriod, 10*time.Minute)
	opts.Logger = logging.OrDiscard(opts.Logger)
	opts.Registerer = metrics.OrPrivate(opts.Registerer)
	// Package k8s's helpers run on its small client; the controller's share the
	// clientset's connections.
	core := k8s.CoreOf(opts.Client.CoreV1().RESTClient(), opts.Client.DiscoveryV1().RESTClient())
	c := &Controller{
		opts:     opts,
		log:      opts.Logger,
		core:     core,
		events:   k8s.NewEvents(core, "herald-controller"),
		pending:  map[string]bool{},
		reported: map[string]map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "herald-controller"}),
	}
	c.metrics = metrics.NewController(opts.Registerer, c.poolStats)
	c.svcFactory = informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.ResyncPeriod, informers.WithNamespace(opts.WatchNamespace))
	c.configs = k8s.NewConfigSource(core, opts.Config, opts.ResyncPeriod)
	c.inForceSrc = k8s.NewConfigSource(core, opts.Config.InForce(), 0)
	c.svcInformer = c.svcFactory.Core().V1().Services().Informer()
	c.svcLister = c.svcFactory.Core().V1().Services().Lister()
	return c, nil
}

// Ready says whether the controller is serving: caches synced and a configuration in force.
func (c *Controller) Ready() error {
	if !c.ready.Load() {
		return errors.New("caches not synced yet")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.alloc == nil {
		return fmt.Errorf("no valid configuration in ConfigMap %s", c.opts.Config)
	}
	return nil
}

// Run syncs Services until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.events.Start()
	defer c.events.Shutdown() // deferred first, so it runs after the workers have returned
	ctx, cancel := context.WithCancel(ctx)
	g, ctx := errgroup.WithContext(ctx)
	c.svcFactory.Start(ctx.Done())
	c.configs.Start(ctx.Done())
	c.inForceSrc.Start(ctx.Done())
	defer c.svcFactory.Shutdown()
	defer c.configs.Shutdown()
	defer c.inForceSrc.Shutdown()
	// Deferred last, so it runs first: the informers stop before the Shutdowns wait for
	// them, also when a panic unwinds.
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), c.svcInformer.HasSynced, c.configs.Informer.HasSynced, c.inForceSrc.Informer.HasSynced) {
		return g.Wait() // ctx ended first
	}
	// The configuration, and with it every assignment already in Service statuses, comes
	// before any Service is synced.
	if err := c.syncConfig(ctx); err != nil {
		c.log.Warn("configuration not published yet; retrying", "err", err)
		c.queue.AddRateLimited(configKey)
	}
	// A Service deleted while no controller ran gives its address back before any other
	// Service is synced, so that the address is free for them (a failure is retried
	// from the queue like any other).
	svcs, _ := c.svcLister.List(labels.Everything())
	for _, svc := range svcs {
		if svc.DeletionTimestamp != nil {
			if err := c.syncService(ctx, k8s.Key(svc)); err != nil {
				c.log.Warn("cleaning up a deleted Service failed; will retry", "service", k8s.Key(svc), "err", err)
			}
		}
	}
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	if _, err := c.svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	onConfig := func(any) { c.queue.Add(configKey) }
	if _, err := c.configs.Informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onConfig, UpdateFunc: func(_, obj any) { onConfig(obj) }, DeleteFunc: onConfig,
	}); err != nil {
		return err
	}
	for range c.opts.Workers {
		g.Go(func() error {
			for c.processNext(ctx) {
			}
			return nil
		})
	}
	g.Go(func() error {
		<-ctx.Done()
		c.queue.ShutDown()
		return nil
	})
	c.ready.Store(true)
	c.log.Info("controller running", "workers", c.opts.Workers, "loadBalancerClass", c.opts.LoadBalancerClass)
	return g.Wait()
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	var err error
	if key == configKey {
		err = c.syncConfig(ctx)
	} else {
		err = c.syncService(ctx, key)
	}
	if err == nil {
		c.queue.Forget(key)
		return true
	}
	if ctx.Err() == nil {
		c.log.Warn("sync failed; will retry", "key", key, "err", err)
		c.queue.AddRateLimited(key)
	}
	return true
}

// syncConfig reads the ConfigMap and puts it in force if config.Admit admits it against
// the addresses Services hold; otherwise it keeps the configuration in force and says
// why. What is put in force is published in the in-force ConfigMap, which the speakers
// run. On the first call, the last configuration published there is put back in force
// before the admin's ConfigMap is judged, so a restart never moves an address.
func (c *Controller) syncConfig(ctx context.Context) error {
	c.mu.Lock()
	first := c.alloc == nil
	c.mu.Unlock()
	if first {
		c.restoreInForce()
	}
	cm, text, err := c.configs.Get()
	if errors.Is(err, k8s.ErrNoConfigMap) {
		if c.seenConfig == nil || *c.seenConfig != "\x00missing" {
			c.seenConfig = ptr("\x00missing")
			c.mu.Lock()
			inForce := c.alloc != nil
			c.mu.Unlock()
			c.log.Warn("configuration ConfigMap not found", "configMap", c.opts.Config.String(), "inForce", inForce)
			if inForce {
				c.metrics.ConfigStale.Set(1)
			}
		}
		return nil
	}
	if errors.Is(err, k8s.ErrNoKey) {
		text = "\x00nokey"
	} else if err != nil {
		return err
	}
	if c.seenConfig != nil && *c.seenConfig == text {
		return nil
	}
	if errors.Is(err, k8s.ErrNoKey) {
		c.seenConfig = &text
		c.refuse(cm, "invalid", "InvalidConfig", err)
		return nil
	}
	c.mu.Lock()
	held := c.heldLocked()
	cfg, err := config.Admit([]byte(text), held)
	var refused *config.Refused
	switch {
	case errors.As(err, &refused):
		c.mu.Unlock()
		c.seenConfig = &text
		c.refuse(cm, "refused", "ConfigRefused", err)
		return nil
	case err != nil:
		c.mu.Unlock()
		c.seenConfig = &text
		c.refuse(cm, "invalid", "InvalidConfig", err)
		return nil
	}
	if c.alloc == nil {
		c.alloc = ipam.New(cfg.Pools)
		c.restoreLocked()
	} else if err := c.alloc.SetPools(cfg.Pools); err != nil {
		// Admit checked the same addresses; reaching here is a bug, and still safe.
		c.mu.Unlock()
		c.seenConfig = &text
		c.refuse(cm, "refused", "ConfigRefused", err)
		return nil
	}
	c.cfg, c.inForce = cfg, text
	c.mu.Unlock()
	if err := k8s.PublishInForce(ctx, c.core, c.opts.Config, text, cm.ResourceVersion); err != nil {
		return err // retried; until then the speakers run the previous configuration
	}
	c.seenConfig = &text
	c.metrics.ConfigLoads.WithLabelValues("accepted").Inc()
	c.metrics.ConfigStale.Set(0)
	c.metrics.ConfigLastSuccess.SetToCurrentTime()
	c.metrics.InForce.Set(config.Hash([]byte(text)))
	msg := fmt.Sprintf("configuration loaded: %d address pools, %d BGP peers (%s)", len(cfg.Pools), len(cfg.Peers), config.Hash([]byte(text)))
	c.events.Event(cm, corev1.EventTypeNormal, "ConfigLoaded", msg)
	c.log.Info("configuration loaded", "configMap", c.opts.Config.String(), "pools", len(cfg.Pools), "peers", len(cfg.Peers), "hash", config.Hash([]byte(text)))
	if len(cfg.Warnings) > 0 {
		// Accepted and in force, but not everything is done as written: say what.
		ws := make([]string, len(cfg.Warnings))
		for i, w := range cfg.Warnings {
			ws[i] = w.String()
		}
		c.events.Event(cm, corev1.EventTypeWarning, "ConfigWarning", truncate("configuration loaded with warnings: "+strings.Join(ws, "; "), 1024))
		c.log.Warn("configuration loaded with warnings", "configMap", c.opts.Config.String(), "warnings", ws)
	}
	// Pools may have grown or changed: every Service is looked at again.
	svcs, _ := c.svcLister.List(labels.Everything())
	for _, svc := range svcs {
		c.queue.Add(k8s.Key(svc))
	}
	return nil
}

// heldLocked returns the addresses a new configuration must keep: what the allocator
// holds once a configuration is in force, else what Service statuses say.
func (c *Controller) heldLocked() []config.Held {
	if c.alloc != nil {
		return c.alloc.Held()
	}
	svcs, _ := c.svcLister.List(labels.Everything())
	return k8s.HeldAddresses(svcs, c.opts.LoadBalancerClass)
}

// restoreInForce puts back in force the configuration the controller published last,
// when it still parses and keeps every held address.
func (c *Controller) restoreInForce() {
	_, text, err := c.inForceSrc.Get()
	if err != nil {
		return // nothing published yet
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, err := config.Admit([]byte(text), c.heldLocked())
	if err != nil {
		c.log.Warn("the configuration published as in force cannot be put back; judging the ConfigMap afresh", "configMap", c.opts.Config.InForce().String(), "err", err)
		return
	}
	c.alloc = ipam.New(cfg.Pools)
	c.restoreLocked()
	c.cfg, c.inForce = cfg, text
	c.metrics.InForce.Set(config.Hash([]byte(text)))
	c.log.Info("configuration in force restored", "configMap", c.opts.Config.InForce().String(), "hash", config.Hash([]byte(text)))
}

func (c *Controller) refuse(cm *corev1.ConfigMap, result, reason string, err error) {
	c.metrics.ConfigLoads.WithLabelValues(result).Inc()
	c.mu.Lock()
	inForce := c.alloc != nil
	c.mu.Unlock()
	c.metrics.ConfigStale.Set(1)
	keeping := "no configuration is in force yet"
	if inForce {
		keeping = "the last good configuration stays in force"
	}
	msg := truncate(fmt.Sprintf("configuration refused, %s: %v", keeping, err), 1024)
	c.events.Event(cm, corev1.EventTypeWarning, reason, msg)
	c.log.Error("configuration refused", "configMap", cm.Namespace+"/"+cm.Name, "reason", reason, "err", err)
}

// truncate cuts s to at most n bytes, ending in "...", on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func ptr[T any](v T) *T { return &v }

// restoreLocked records every address already in a Service's status (k8s.Restore).
func (c *Controller) restoreLocked() {
	svcs, _ := c.svcLister.List(labels.Everything())
	restored, lost := k8s.Restore(c.alloc, svcs, c.opts.LoadBalancerClass)
	for _, key := range slices.Sorted(maps.Keys(lost)) {
		c.log.Warn("cannot keep the address in the Service's status", "service", key, "err", lost[key])
	}
	c.log.Info("restored assignments from Service statuses", "services", restored)
}

func (c *Controller) poolStats() []ipam.PoolStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.alloc == nil {
		return nil
	}
	return c.alloc.Stats()
}

// syncService brings one Service's address and status in line with its spec.
func (c *Controller) syncService(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not a key we made; nothing to do
	}
	svc, err := c.svcLister.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.release(key)
		return nil
	}
	if err != nil {
		return err
	}
	switch {
	case svc.DeletionTimestamp != nil:
		return c.cleanup(ctx, svc, k8s.ClassIsOurs(svc, c.opts.LoadBalancerClass), "the Service is being deleted")
	case !k8s.ClassIsOurs(svc, c.opts.LoadBalancerClass):
		// Never touch another class's status or finalizer, unless what is there is
		// Herald's own, left from before the Service changed class.
		return c.cleanup(ctx, svc, false, "the Service has another loadBalancerClass")
	case svc.Spec.Type != corev1.ServiceTypeLoadBalancer:
		return c.cleanup(ctx, svc, true, "the Service is no longer of type LoadBalancer")
	}

	req, reqErr := k8s.Request(svc)
	c.mu.Lock()
	noConfig := c.alloc == nil
	c.mu.Unlock()
	if noConfig {
		c.report(svc, "NoConfiguration", "no_config", fmt.Sprintf("no valid configuration in ConfigMap %s yet", c.opts.Config))
		return nil
	}
	// The finalizer comes before the address, as with the cloud providers' service
	// controller: a Service cannot disappear holding an address Herald has not released.
	if svc, err = c.addFinalizer(ctx, svc); err != nil || svc == nil {
		return err
	}
	c.mu.Lock()
	before, _ := c.alloc.Assigned(key)
	var as ipam.Assignment
	if reqErr == nil {
		as, err = c.assignLocked(svc, req)
	}
	held, holds := c.alloc.Assigned(key)
	c.pending[key] = reqErr != nil || err != nil
	if !c.pending[key] {
		delete(c.pending, key)
	}
	c.mu.Unlock()
	if !slices.Equal(before.IPs, held.IPs) && len(before.IPs) > 0 {
		c.retryPending() // addresses were freed
	}

	var want []netip.Addr
	switch {
	case reqErr != nil:
		c.report(svc, "InvalidRequest", "invalid_annotation", reqErr.Error())
		want = held.IPs
	case err != nil:
		var e *ipam.Error
		reason := ipam.Reason(0)
		if errors.As(err, &e) {
			reason = e.Reason
		}
		c.report(svc, eventReason(reason), reason.String(), err.Error())
		want = held.IPs
	default:
		c.clearReport(key)
		want = as.IPs
	}
	if !holds {
		want = nil
	}
	if _, ferr := k8s.ForwardingOf(svc); ferr != nil {
		c.reportOnce(svc, "annotation", "InvalidForwarding", ferr.Error())
	} else {
		c.forgetReport(key, "annotation")
	}
	return c.writeStatus(ctx, svc, want, held.Pool)
}

// CleanupFinalizer is the finalizer Herald puts on every LoadBalancer Service it serves,
// the one Kubernetes' service controller uses for the same purpose: the Service is not
// removed until Herald has released its address and cleared its status.
const CleanupFinalizer = "service.kubernetes.io/load-balancer-cleanup"

func hasFinalizer(svc *corev1.Service) bool { return slices.Contains(svc.Finalizers, CleanupFinalizer) }

// addFinalizer puts CleanupFinalizer on svc unless it is there, and returns the Service
// as the API server now has it (nil when it is gone).
func (c *Controller) addFinalizer(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	if hasFinalizer(svc) {
		return svc, nil
	}
	// A strategic merge patch adds to the finalizer list: the other finalizers stay.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": []string{CleanupFinalizer}}})
	got, err := c.patchStatus(ctx, svc, patch)
	if err != nil {
		return nil, fmt.Errorf("add finalizer %s to Service %s: %w", CleanupFinalizer, k8s.Key(svc), err)
	}
	return got, nil
}

// cleanup ends what Herald does for a Service it no longer serves: it clears the status
// Herald wrote (when clearStatus says the status is Herald's to clear), removes
// CleanupFinalizer, and only then releases the address, so that no two Services ever
// show it at once. For a Service of another class, whose status and finalizer belong to
// that class's implementation, it does so only when Herald held an address for it.
func (c *Controller) cleanup(ctx context.Context, svc *corev1.Service, clearStatus bool, why string) error {
	key := k8s.Key(svc)
	c.mu.Lock()
	held := false
	if c.alloc != nil {
		_, held = c.alloc.Assigned(key)
	}
	c.mu.Unlock()
	ours := held || clearStatus
	clear := ours && len(svc.Status.LoadBalancer.Ingress) > 0 && (held || c.inPools(k8s.IngressIPs(svc)))
	unfinalize := ours && hasFinalizer(svc)
	if clear || unfinalize {
		patch := map[string]any{}
		if clear {
			patch["status"] = map[string]any{"loadBalancer": map[string]any{"ingress": nil}}
		}
		if unfinalize {
			patch["metadata"] = map[string]any{"$deleteFromPrimitiveList/finalizers": []string{CleanupFinalizer}}
		}
		data, _ := json.Marshal(patch)
		if _, err := c.patchStatus(ctx, svc, data); err != nil {
			return fmt.Errorf("clean up Service %s (%s): %w", key, why, err)
		}
	}
	if c.release(key) {
		c.events.Event(svc, corev1.EventTypeNormal, "IPReleased", "Released the load-balancer address: "+why)
		c.log.Info("released", "service", key, "why", why)
	}
	return nil
}

// patchStatus applies a strategic merge patch through the status subresource, which
// may change the status and the metadata but never the spec. A Service that is gone
// is no error: it returns nil.
func (c *Controller) patchStatus(ctx context.Context, svc *corev1.Service, patch []byte) (*corev1.Service, error) {
	got, err := c.opts.Client.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return got, err
}

// assignLocked asks the allocator, falling back to one family for PreferDualStack.
func (c *Controller) assignLocked(svc *corev1.Service, req ipam.Request) (ipam.Assignment, error) {
	as, err := c.alloc.Assign(req)
	if err == nil || len(req.Families) < 2 || svc.Spec.IPFamilyPolicy == nil || *svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicyPreferDualStack {
		return as, err
	}
	req.Families = req.Families[:1]
	req.IPs = slices.DeleteFunc(slices.Clone(req.IPs), func(ip netip.Addr) bool { return ipam.FamilyOf(ip) != req.Families[0] })
	return c.alloc.Assign(req)
}

func eventReason(r ipam.Reason) string {
	switch r {
	case ipam.PoolExhausted:
		return "PoolExhausted"
	case ipam.IPUnavailable:
		return "IPUnavailable"
	case ipam.SharingConflict:
		return "SharingConflict"
	case ipam.UnknownPool:
		return "UnknownPool"
	}
	return "InvalidRequest"
}

// release frees what key holds and reports whether it held anything.
func (c *Controller) release(key string) bool {
	c.mu.Lock()
	held := false
	if c.alloc != nil {
		_, held = c.alloc.Assigned(key)
		c.alloc.Release(key)
	}
	delete(c.pending, key)
	delete(c.reported, key)
	c.mu.Unlock()
	if held {
		c.retryPending()
	}
	return held
}

func (c *Controller) retryPending() {
	c.mu.Lock()
	keys := make([]string, 0, len(c.pending))
	for k := range c.pending {
		keys = append(keys, k)
	}
	c.mu.Unlock()
	for _, k := range keys {
		c.queue.Add(k)
	}
}

// inPools reports whether any of ips lies in a configured pool.
func (c *Controller) inPools(ips []netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg == nil {
		return false
	}
	return slices.ContainsFunc(ips, func(ip netip.Addr) bool {
		_, ok := c.cfg.PoolOf(ip)
		return ok
	})
}

// report records a problem with giving a Service an address as an Event, once for as
// long as it lasts.
func (c *Controller) report(svc *corev1.Service, reason, metric, msg string) {
	if !c.reportOnce(svc, "", reason, msg) {
		return
	}
	c.metrics.Allocations.WithLabelValues(metric).Inc()
	c.log.Warn("cannot give the Service an address", "service", k8s.Key(svc), "reason", reason, "err", msg)
}

// reportOnce records a Warning Event for a problem of one kind (topic) with a Service,
// unless the same one was recorded last; it reports whether it recorded it.
func (c *Controller) reportOnce(svc *corev1.Service, topic, reason, msg string) bool {
	key, said := k8s.Key(svc), reason+"\x00"+msg
	c.mu.Lock()
	same := c.reported[key][topic] == said
	if c.reported[key] == nil {
		c.reported[key] = map[string]string{}
	}
	c.reported[key][topic] = said
	c.mu.Unlock()
	if same {
		return false
	}
	c.events.Event(svc, corev1.EventTypeWarning, reason, msg)
	if topic != "" {
		c.log.Warn("Service asks for something Herald cannot do", "service", k8s.Key(svc), "reason", reason, "err", msg)
	}
	return true
}

func (c *Controller) clearReport(key string) { c.forgetReport(key, "") }

func (c *Controller) forgetReport(key, topic string) {
	c.mu.Lock()
	delete(c.reported[key], topic)
	c.mu.Unlock()
}

// writeStatus publishes ips in the Service's status when it says otherwise, with ipMode
// Proxy when the pool forwards.
func (c *Controller) writeStatus(ctx context.Context, svc *corev1.Service, ips []netip.Addr, pool string) error {
	c.mu.Lock()
	forward := false
	if c.cfg != nil {
		if p, ok := c.cfg.Pool(pool); ok {
			forward = p.Forward
		}
	}
	c.mu.Unlock()
	want := k8s.Ingress(ips, forward)
	if k8s.IngressEqual(svc.Status.LoadBalancer.Ingress, want) {
		return nil
	}
	upd := svc.DeepCopy()
	upd.Status.LoadBalancer.Ingress = want
	_, err := c.opts.Client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update status of Service %s: %w", k8s.Key(svc), err)
	}
	// Clearing is said by whoever decided it (a release, or the reported failure).
	if len(ips) > 0 && slices.Equal(ips, k8s.IngressIPs(svc)) {
		c.log.Info("ipMode changed", "service", k8s.Key(svc), "ip", ipList(ips), "pool", pool, "forwarded", forward)
	} else if len(ips) > 0 {
		c.metrics.Allocations.WithLabelValues("assigned").Inc()
		c.events.Eventf(svc, corev1.EventTypeNormal, "IPAllocated", "Assigned IP %s from pool %q", ipList(ips), pool)
		c.log.Info("assigned", "service", k8s.Key(svc), "ip", ipList(ips), "pool", pool)
	}
	return nil
}

func ipList(ips []netip.Addr) string {
	s := ""
	for i, ip := range ips {
		if i > 0 {
			s += ","
		}
		s += ip.String()
	}
	return s
}
