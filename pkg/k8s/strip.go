package k8s

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// Strip is an informer transform that keeps of Services, EndpointSlices and Nodes only
// what Herald reads, so that a cache of thousands of them stays small: no managedFields,
// no foreign annotations, no node images or capacity, no endpoint topology. Other
// objects pass through unchanged.
func Strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		return stripService(o), nil
	case *discoveryv1.EndpointSlice:
		return stripSlice(o), nil
	case *corev1.Node:
		return stripNode(o), nil
	case cache.DeletedFinalStateUnknown:
		inner, err := Strip(o.Obj)
		return cache.DeletedFinalStateUnknown{Key: o.Key, Obj: inner}, err
	}
	return obj, nil
}

// meta keeps what a cache, a key and an Event need.
func meta(m metav1.ObjectMeta, labels map[string]string, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
		Labels: labels, Annotations: annotations,
	}
}

func stripService(s *corev1.Service) *corev1.Service {
	var ann map[string]string
	for k, v := range s.Annotations {
		if strings.HasPrefix(k, heraldPrefix) || strings.HasPrefix(k, metallbPrefix) {
			if ann == nil {
				ann = map[string]string{}
			}
			ann[k] = v
		}
	}
	out := &corev1.Service{TypeMeta: s.TypeMeta, ObjectMeta: meta(s.ObjectMeta, nil, ann)}
	out.Spec = corev1.ServiceSpec{
		Type: s.Spec.Type, Ports: s.Spec.Ports, Selector: s.Spec.Selector,
		LoadBalancerIP: s.Spec.LoadBalancerIP, LoadBalancerClass: s.Spec.LoadBalancerClass,
		LoadBalancerSourceRanges: s.Spec.LoadBalancerSourceRanges, ExternalTrafficPolicy: s.Spec.ExternalTrafficPolicy,
		SessionAffinity: s.Spec.SessionAffinity, SessionAffinityConfig: s.Spec.SessionAffinityConfig,
		IPFamilies: s.Spec.IPFamilies, IPFamilyPolicy: s.Spec.IPFamilyPolicy,
		AllocateLoadBalancerNodePorts: s.Spec.AllocateLoadBalancerNodePorts,
	}
	out.Status.LoadBalancer = s.Status.LoadBalancer
	return out
}

func stripSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	var labels map[string]string
	if name, ok := es.Labels[discoveryv1.LabelServiceName]; ok {
		labels = map[string]string{discoveryv1.LabelServiceName: name}
	}
	out := &discoveryv1.EndpointSlice{TypeMeta: es.TypeMeta, ObjectMeta: meta(es.ObjectMeta, labels, nil), AddressType: es.AddressType, Ports: es.Ports}
	out.Endpoints = make([]discoveryv1.Endpoint, len(es.Endpoints))
	for i, e := range es.Endpoints {
		out.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, NodeName: e.NodeName,
			Conditions: discoveryv1.EndpointConditions{Ready: e.Conditions.Ready, Serving: e.Conditions.Serving, Terminating: e.Conditions.Terminating}}
	}
	return out
}

func stripNode(n *corev1.Node) *corev1.Node {
	out := &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: meta(n.ObjectMeta, n.Labels, nil)}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			out.Status.Conditions = []corev1.NodeCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	return out
}

// Changed reports whether an informer update changed anything Herald reads: after
// Strip, anything but the resource version. It never writes to either object (the old
// one may be read concurrently from the cache).
func Changed(old, cur any) bool {
	switch o := old.(type) {
	case *corev1.Service:
		c, ok := cur.(*corev1.Service)
		return !ok || !sameBut(*o, *c, &o.ObjectMeta, &c.ObjectMeta)
	case *discoveryv1.EndpointSlice:
		c, ok := cur.(*discoveryv1.EndpointSlice)
		return !ok || !sameBut(*o, *c, &o.ObjectMeta, &c.ObjectMeta)
	case *corev1.Node:
		c, ok := cur.(*corev1.Node)
		return !ok || !sameBut(*o, *c, &o.ObjectMeta, &c.ObjectMeta)
	}
	return true
}

// sameBut compares copies a and b of two objects with the resource version of b's
// metadata put into a's copy.
func sameBut[T any](a, b T, am, bm *metav1.ObjectMeta) bool {
	if am.ResourceVersion == bm.ResourceVersion {
		return true // a resync: nothing new
	}
	ca := any(&a)
	metaOf(ca).ResourceVersion = bm.ResourceVersion
	return apiequality.Semantic.DeepEqual(&a, &b)
}

func metaOf(obj any) *metav1.ObjectMeta {
	switch o := obj.(type) {
	case *corev1.Service:
		return &o.ObjectMeta
	case *discoveryv1.EndpointSlice:
		return &o.ObjectMeta
	case *corev1.Node:
		return &o.ObjectMeta
	}
	panic(fmt.Sprintf("k8s: no metadata for %T", obj))
}
