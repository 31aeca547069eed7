package k8s

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Core is the API client of what package k8s reads and writes: core/v1 (Services,
// Nodes, ConfigMaps, Secrets, Events) and discovery/v1 (EndpointSlices), over
// client-go's REST client with a scheme of those two groups only. The speaker runs on it
// alone: client-go's typed clientset registers, and so links and faults in, the types
// of every API group, 30 MiB of a speaker's resident memory for objects it never reads.
type Core struct {
	core, discovery rest.Interface
}

// scheme knows core/v1, discovery/v1 and the unversioned meta types (Status, watch
// events, list options).
var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(corev1.AddToScheme(scheme))
	utilruntime.Must(discoveryv1.AddToScheme(scheme))
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
}

// Protobuf is smaller on the wire and cheaper to decode than JSON; the API server serves
// every built-in type in it.
const (
	contentProtobuf = "application/vnd.kubernetes.protobuf"
	acceptProtobuf  = contentProtobuf + ",application/json"
)

// NewCore returns a Core client for the API server of cfg.
func NewCore(cfg *rest.Config) (*Core, error) {
	c := &Core{}
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	for _, g := range []struct {
		dst  *rest.Interface
		gv   schema.GroupVersion
		path string
	}{{&c.core, corev1.SchemeGroupVersion, "/api"}, {&c.discovery, discoveryv1.SchemeGroupVersion, "/apis"}} {
		cc := rest.CopyConfig(cfg)
		cc.GroupVersion, cc.APIPath = &g.gv, g.path
		cc.NegotiatedSerializer = codecs
		cc.ContentType, cc.AcceptContentTypes = contentProtobuf, acceptProtobuf
		if cc.UserAgent == "" {
			cc.UserAgent = rest.DefaultKubernetesUserAgent()
		}
		rc, err := rest.RESTClientFor(cc)
		if err != nil {
			return nil, fmt.Errorf("API client for %s: %w", g.gv, err)
		}
		*g.dst = rc
	}
	return c, nil
}

// CoreOf wraps REST clients that already exist for core/v1 and discovery/v1, such as a
// typed clientset's CoreV1().RESTClient() and DiscoveryV1().RESTClient(), so that a
// binary that has a clientset anyway shares its connections.
func CoreOf(core, discovery rest.Interface) *Core {
	return &Core{core: core, discovery: discovery}
}

// resource names the API collection of an object type Core serves.
func (c *Core) resource(obj runtime.Object) (rest.Interface, string, bool) {
	switch obj.(type) {
	case *corev1.Service:
		return c.core, "services", true
	case *corev1.Node:
		return c.core, "nodes", false
	case *corev1.ConfigMap:
		return c.core, "configmaps", true
	case *corev1.Secret:
		return c.core, "secrets", true
	case *corev1.Event:
		return c.core, "events", true
	case *discoveryv1.EndpointSlice:
		return c.discovery, "endpointslices", true
	}
	panic(fmt.Sprintf("k8s.Core does not serve %T", obj))
}

// Get reads namespace/name (namespace empty for Nodes) into into.
func (c *Core) Get(ctx context.Context, namespace, name string, into runtime.Object) error {
	r, res, namespaced := c.resource(into)
	return r.Get().NamespaceIfScoped(namespace, namespaced).Resource(res).Name(name).Do(ctx).Into(into)
}

// Create creates obj in its namespace and reads what the API server stored back into it.
func (c *Core) Create(ctx context.Context, obj runtime.Object) error {
	req, _, err := c.on(obj, rest.Interface.Post)
	if err != nil {
		return err
	}
	return req.Body(obj).Do(ctx).Into(obj)
}

// Update replaces obj (its resourceVersion guards against a concurrent write) and reads
// what the API server stored back into it.
func (c *Core) Update(ctx context.Context, obj runtime.Object) error {
	req, m, err := c.on(obj, rest.Interface.Put)
	if err != nil {
		return err
	}
	return req.Name(m.GetName()).Body(obj).Do(ctx).Into(obj)
}

// Patch applies a patch of type pt to obj's namespace and name and reads the result into obj.
func (c *Core) Patch(ctx context.Context, obj runtime.Object, pt types.PatchType, data []byte) error {
	req, m, err := c.on(obj, func(r rest.Interface) *rest.Request { return r.Patch(pt) })
	if err != nil {
		return err
	}
	return req.Name(m.GetName()).Body(data).Do(ctx).Into(obj)
}

// on starts a request of verb on obj's collection, in obj's namespace.
func (c *Core) on(obj runtime.Object, verb func(rest.Interface) *rest.Request) (*rest.Request, metav1.Object, error) {
	r, res, namespaced := c.resource(obj)
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return verb(r).NamespaceIfScoped(m.GetNamespace(), namespaced).Resource(res), m, nil
}

// Informers makes the informers of one component on a Core client and runs them: each
// keeps only what transform leaves of an object, and is indexed by namespace for the
// listers.
type Informers struct {
	core      *Core
	resync    time.Duration
	transform cache.TransformFunc

	mu      sync.Mutex
	list    []cache.SharedIndexInformer
	started int // how many of list run
	wg      sync.WaitGroup
}

// NewInformers returns an empty set; add informers with For before Start.
func NewInformers(c *Core, resync time.Duration, transform cache.TransformFunc) *Informers {
	return &Informers{core: c, resync: resync, transform: transform}
}

// For returns a new informer of the objects of example's type in namespace (all when
// empty); tweak, when not nil, narrows the list (a field or label selector).
func (f *Informers) For(example runtime.Object, namespace string, tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	r, res, _ := f.core.resource(example)
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	lw := cache.NewFilteredListWatchFromClient(r, res, namespace, tweak)
	inf := cache.NewSharedIndexInformerWithOptions(lw, example, cache.SharedIndexInformerOptions{
		ResyncPeriod: f.resync,
		Indexers:     cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
	})
	if f.transform != nil {
		utilruntime.Must(inf.SetTransform(f.transform))
	}
	f.mu.Lock()
	f.list = append(f.list, inf)
	f.mu.Unlock()
	return inf
}

// Start runs every informer not running yet until stop closes.
func (f *Informers) Start(stop <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, inf := range f.list[f.started:] {
		f.wg.Go(func() { inf.Run(stop) })
	}
	f.started = len(f.list)
}

// Shutdown waits for the informers to end; close Start's stop channel first.
func (f *Informers) Shutdown() { f.wg.Wait() }
