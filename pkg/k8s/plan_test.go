package k8s

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// A node's InternalIPs are used as next hops and real servers: only addresses another
// node can send to are kept (IPv4 link-local needs no zone, IPv6 link-local does), an
// IPv4-mapped one as IPv4.
func TestPlanNodeKeepsUsableAddresses(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	for _, a := range []string{"10.0.0.1", "fd10::11", "::ffff:10.0.0.2", "127.0.0.1", "::1", "0.0.0.0", "::",
		"fe80::1%eth0", "fe80::1", "169.254.1.1", "224.0.0.1", "ff02::1", "255.255.255.255", "not-an-ip"} {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"})
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd10::11"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("169.254.1.1")}
	if got := PlanNode(n).Addresses; !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
}

// Endpoints as kube-proxy counts them for a Local Service: ready ones (an unset condition
// is ready), and terminating ones still serving, marked so; the others not at all. Only
// ready ones make a node eligible to announce.
func TestPlanServiceEndpointConditions(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}}
	yes, no := ptr.To(true), ptr.To(false)
	ep := func(addr, node string, c discoveryv1.EndpointConditions) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: ptr.To(node), Conditions: c}
	}
	slice := &discoveryv1.EndpointSlice{Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{
			ep("10.244.1.1", "n1", discoveryv1.EndpointConditions{}),
			ep("10.244.2.1", "n2", discoveryv1.EndpointConditions{Ready: yes}),
			ep("10.244.3.1", "n3", discoveryv1.EndpointConditions{Ready: no, Serving: yes, Terminating: yes}),
			ep("10.244.4.1", "n4", discoveryv1.EndpointConditions{Ready: no, Serving: no, Terminating: yes}),
			ep("10.244.5.1", "n5", discoveryv1.EndpointConditions{Ready: no, Serving: yes}),
		}}
	// What the informers keep (Strip) is what the plan needs.
	stripped, err := Strip(slice)
	if err != nil {
		t.Fatal(err)
	}
	ps := PlanService(svc, nil, []*discoveryv1.EndpointSlice{stripped.(*discoveryv1.EndpointSlice)})
	got := map[string]bool{}
	for _, e := range ps.Endpoints {
		got[e.Node] = e.Terminating
	}
	if want := map[string]bool{"n1": false, "n2": false, "n3": true}; !maps.Equal(got, want) {
		t.Errorf("endpoints (node: terminating) %v, want %v", got, want)
	}
	if want := map[string]bool{"n1": true, "n2": true}; !maps.Equal(ps.EndpointNodes, want) {
		t.Errorf("nodes eligible by their endpoints %v, want %v", ps.EndpointNodes, want)
	}
}
