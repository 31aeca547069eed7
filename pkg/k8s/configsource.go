package k8s

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/heraldlb/herald/pkg/config"
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
	Ref       ConfigRef
	Informer  cache.SharedIndexInformer
	informers *Informers
	lister    corelisters.ConfigMapLister
}

// NewConfigSource returns a watcher of ref's ConfigMap; it starts with Start.
func NewConfigSource(client *Core, ref ConfigRef, resync time.Duration) *ConfigSource {
	ref = ref.WithDefaults()
	f := NewInformers(client, resync, nil)
	inf := f.For(&corev1.ConfigMap{}, ref.Namespace, func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ref.Name })
	return &ConfigSource{Ref: ref, informers: f, Informer: inf, lister: corelisters.NewConfigMapLister(inf.GetIndexer())}
}

// Start begins watching until stop closes; Shutdown waits for the watch to end.
func (s *ConfigSource) Start(stop <-chan struct{}) { s.informers.Start(stop) }

// Shutdown waits for the watch started by Start to end.
func (s *ConfigSource) Shutdown() { s.informers.Shutdown() }

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

// Annotations on the ConfigMap that holds the configuration in force.
const (
	AnnotationConfigHash     = "herald.dev/config-hash"     // config.Hash of the text
	AnnotationSourceRevision = "herald.dev/source-revision" // resourceVersion of the admin's ConfigMap it came from
)

// InForce names the ConfigMap where the controller publishes the configuration it put in
// force: the admin's ConfigMap name with "-in-force", same namespace and key. The
// speakers run what it holds, so that a configuration the controller refuses changes
// nothing they do.
func (r ConfigRef) InForce() ConfigRef {
	r = r.WithDefaults()
	return ConfigRef{Namespace: r.Namespace, Name: r.Name + "-in-force", Key: r.Key}
}

// PublishInForce writes text into the in-force ConfigMap of ref (creating it), unless it
// holds that text already.
func PublishInForce(ctx context.Context, client *Core, ref ConfigRef, text, sourceRevision string) error {
	in := ref.InForce()
	want := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: in.Namespace, Name: in.Name,
			Labels: map[string]string{"app.kubernetes.io/part-of": "herald", "app.kubernetes.io/managed-by": "herald-controller"},
			Annotations: map[string]string{
				AnnotationConfigHash: config.Hash([]byte(text)), AnnotationSourceRevision: sourceRevision,
				"herald.dev/note": "Written by Herald's controller: the configuration in force. Edit " + ref.String() + " instead.",
			},
		},
		Data: map[string]string{in.Key: text},
	}
	have := &corev1.ConfigMap{}
	err := client.Get(ctx, in.Namespace, in.Name, have)
	if apierrors.IsNotFound(err) {
		if err := client.Create(ctx, want); err != nil {
			return fmt.Errorf("publish the configuration in force in ConfigMap %s: %w", in, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read ConfigMap %s: %w", in, err)
	}
	if have.Data[in.Key] == text && have.Annotations[AnnotationSourceRevision] == sourceRevision {
		return nil
	}
	have.Data, have.Labels = want.Data, want.Labels
	if have.Annotations == nil {
		have.Annotations = map[string]string{}
	}
	maps.Copy(have.Annotations, want.Annotations)
	if err := client.Update(ctx, have); err != nil {
		return fmt.Errorf("publish the configuration in force in ConfigMap %s: %w", in, err)
	}
	return nil
}

// HeldAddresses returns what the Services of class hold, by their statuses.
func HeldAddresses(svcs []*corev1.Service, class string) []config.Held {
	var out []config.Held
	for _, svc := range svcs {
		if !Manages(svc, class) {
			continue
		}
		for _, ip := range IngressIPs(svc) {
			out = append(out, config.Held{Service: Key(svc), IP: ip})
		}
	}
	return out
}
