package k8s

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// ConfigRef names the ConfigMap key that holds Herald's configuration.
type ConfigRef struct {
	Namespace, Name, Key string
}

// WithDefaults fills what is unset: herald-system/config, key config.
func (r ConfigRef) WithDefaults() ConfigRef {
	return ConfigRef{
		Namespace: cmp.Or(r.Namespace, "herald-system"),
		Name:      cmp.Or(r.Name, "config"),
		Key:       cmp.Or(r.Key, "config"),
	}
}

func (r ConfigRef) String() string { return r.Namespace + "/" + r.Name }

// ErrNoConfigMap and ErrNoKey say why ConfigSource.Get found no configuration text.
var (
	ErrNoConfigMap = errors.New("configuration ConfigMap not found")
	ErrNoKey       = errors.New("configuration ConfigMap has no such key")
)

// ConfigSource watches the one ConfigMap of a ConfigRef.
type ConfigSource struct {
	Ref      ConfigRef
	Informer cache.SharedIndexInformer
	factory  informers.SharedInformerFactory
	lister   corelisters.ConfigMapLister
}

// NewConfigSource returns a watcher of ref's ConfigMap; it starts with Start.
func NewConfigSource(client kubernetes.Interface, ref ConfigRef, resync time.Duration) *ConfigSource {
	ref = ref.WithDefaults()
	f := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithNamespace(ref.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ref.Name }))
	return &ConfigSource{
		Ref: ref, factory: f,
		Informer: f.Core().V1().ConfigMaps().Informer(),
		lister:   f.Core().V1().ConfigMaps().Lister(),
	}
}

// Start begins watching until stop closes; Shutdown waits for the watch to end.
func (s *ConfigSource) Start(stop <-chan struct{}) { s.factory.Start(stop) }

// Shutdown waits for the watch started by Start to end.
func (s *ConfigSource) Shutdown() { s.factory.Shutdown() }

// Get returns the ConfigMap and the configuration text under the key, from the cache.
// The error is ErrNoConfigMap or ErrNoKey (wrapped, naming the ConfigMap) when there is
// no text; the ConfigMap is returned with ErrNoKey so that the problem can be reported on it.
func (s *ConfigSource) Get() (*corev1.ConfigMap, string, error) {
	cm, err := s.lister.ConfigMaps(s.Ref.Namespace).Get(s.Ref.Name)
	if apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("%w: %s", ErrNoConfigMap, s.Ref)
	}
	if err != nil {
		return nil, "", err
	}
	text, ok := cm.Data[s.Ref.Key]
	if !ok {
		return cm, "", fmt.Errorf("%w: %s has no key %q", ErrNoKey, s.Ref, s.Ref.Key)
	}
	return cm, text, nil
}
