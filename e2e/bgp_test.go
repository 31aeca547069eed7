package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const bgpConfig = `
forwarding: none
peers:
- {peer-address: 192.168.10.1, peer-asn: 64500, my-asn: 64501}
- {peer-address: "fd10::1", peer-asn: 64500, my-asn: 64501}
address-pools:
- name: routed
  protocol: bgp
  addresses: [198.51.100.0/24, "2001:db8:100::/120"]
  bgp-advertisements:
  - communities: ["64512:100"]
    large-communities: ["64512:1:2"]
`

// nextHops returns the sorted next hops of the router's paths for prefix.
func nextHops(r *Router, prefix string) ([]string, []FRRPath) {
	paths, err := r.Paths(prefix)
	if err != nil {
		return nil, nil
	}
	var hops []string
	for _, p := range paths {
		if len(p.Nexthops) > 0 {
			hops = append(hops, p.Nexthops[0].IP)
		}
	}
	slices.Sort(hops)
	return hops, paths
}

// waitHops waits until the router's paths for prefix go through exactly want, and
// returns them and how long it took.
func waitHops(t testing.TB, r *Router, prefix string, want []string, limit time.Duration) ([]FRRPath, time.Duration) {
	t.Helper()
	start := time.Now()
	var got []string
	var paths []FRRPath
	for time.Since(start) < limit {
		if got, paths = nextHops(r, prefix); slices.Equal(got, want) {
			return paths, time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	summary, _ := r.VTY("show bgp summary")
	t.Fatalf("router paths for %s through %v after %s, want %v\n%s", prefix, got, limit, want, summary)
	return nil, 0
}

func frr(nodes []*Node) string { return FRRConfig(nodes) }

func TestBGPWithFRR(t *testing.T) {
	c := start(t, Options{Config: bgpConfig, Router: frr})
	r := c.Router
	ips := c.CreateService("web", func(s *corev1.Service) {
		p := corev1.IPFamilyPolicyRequireDualStack
		s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &p, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	})
	v4, v6 := ips[0].String()+"/32", ips[1].String()+"/128"
	all4 := []string{"192.168.10.11", "192.168.10.12", "192.168.10.13"}
	all6 := []string{"fd10::11", "fd10::12", "fd10::13"}

	// Every node advertises a Cluster Service; the router keeps all three paths (ECMP)
	// with the communities as sent, and installs them.
	paths, took := waitHops(t, r, v4, all4, 30*time.Second)
	t.Logf("IPv4 route with three next hops in the router's table %s after the Service got its address", took.Round(time.Millisecond))
	for _, p := range paths {
		if p.Community.String != "64512:100" || p.LargeCommunity.String != "64512:1:2" {
			t.Errorf("path via %v carries communities %q and %q", p.Nexthops, p.Community.String, p.LargeCommunity.String)
		}
	}
	// Best-path selection marks them all for ECMP a moment after they arrive.
	ecmp := func(ps []FRRPath) bool {
		return len(ps) == 3 && !slices.ContainsFunc(ps, func(p FRRPath) bool { return !p.Multipath && (p.Bestpath == nil || !p.Bestpath.Overall) })
	}
	for deadline := time.Now().Add(5 * time.Second); !ecmp(paths); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the router does not use all three paths for ECMP: %+v", paths)
		}
		_, paths = nextHops(r, v4)
	}
	waitHops(t, r, v6, all6, 30*time.Second)
	route := r.NS.Run("ip", "route", "show", v4)
	for _, hop := range all4 {
		if !strings.Contains(route, "via "+hop) {
			t.Errorf("the router's kernel route %q lacks next hop %s", route, hop)
		}
	}

	// A speaker that stops gracefully closes its sessions: its paths go at once.
	c.Signal(c.Nodes[0], syscall.SIGTERM)
	_, took = waitHops(t, r, v4, all4[1:], 10*time.Second)
	t.Logf("node1's path withdrawn %s after its speaker got SIGTERM", took.Round(time.Millisecond))
	waitHops(t, r, v6, all6[1:], 10*time.Second)
	c.StopSpeaker(c.Nodes[0], syscall.SIGKILL)
	c.StartSpeaker(c.Nodes[0])
	waitHops(t, r, v4, all4, 30*time.Second)

	// Deleting the Service withdraws its routes everywhere.
	if err := c.Kube.CoreV1().Services("default").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHops(t, r, v4, nil, 10*time.Second)
	waitHops(t, r, v6, nil, 10*time.Second)
}

func TestBGPLocalFollowsEndpoints(t *testing.T) {
	c := start(t, Options{Config: bgpConfig, Router: frr})
	ctx := context.Background()
	ready := true
	slice := func(nodes ...string) *discoveryv1.EndpointSlice {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "local-1", Labels: map[string]string{discoveryv1.LabelServiceName: "local"}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for i, n := range nodes {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.%d.5", i)}, NodeName: &n, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		return es
	}
	if _, err := c.Kube.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("node2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ips := c.CreateService("local", func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	prefix := ips[0].String() + "/32"
	waitHops(t, c.Router, prefix, []string{"192.168.10.12"}, 30*time.Second)
	if _, err := c.Kube.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("node1", "node3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHops(t, c.Router, prefix, []string{"192.168.10.11", "192.168.10.13"}, 10*time.Second)
}

// BIRD as the router too, so Herald is not tuned to one implementation: it receives every
// node's path with the communities, and loses a node's path when its speaker stops.
func TestBGPWithBIRD(t *testing.T) {
	c := start(t, Options{Config: strings.Replace(bgpConfig, "peer-address: 192.168.10.1,", "peer-address: 192.168.10.3,", 1)})
	b := c.StartBIRD()
	ip := c.CreateService("web", nil)[0].String() + "/32"
	all := []string{"192.168.10.11", "192.168.10.12", "192.168.10.13"}
	var got []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = b.NextHops(ip); slices.Equal(got, all) {
			break
		}
	}
	if !slices.Equal(got, all) {
		out, _ := b.Show("show protocols")
		t.Fatalf("BIRD's routes for %s via %v, want %v\n%s", ip, got, all, out)
	}
	if out, _ := b.Show("show route " + ip + " all"); !strings.Contains(out, "(64512,100)") || !strings.Contains(out, "(64512, 1, 2)") {
		t.Errorf("BIRD's route lacks the communities:\n%s", out)
	}
	c.Signal(c.Nodes[0], syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = b.NextHops(ip); slices.Equal(got, all[1:]) {
			return
		}
	}
	t.Errorf("after node1's speaker stopped, BIRD routes %s via %v", ip, got)
}
