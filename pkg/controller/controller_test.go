package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/k8s/leader"
)

const issueConfig = `
address-pools:
- name: default
  protocol: layer2
  addresses:
  - 192.168.10.90-192.168.10.100
`

func TestAssignsAddressInStatus(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	c := e.start(e.options())
	e.create("nginx")
	e.waitIPs("nginx", "192.168.10.90")
	ev := e.waitEvent("Service", "nginx", "IPAllocated", "192.168.10.90")
	if ev.Type != corev1.EventTypeNormal {
		t.Errorf("IPAllocated Event type %q", ev.Type)
	}
	e.create("second")
	e.waitIPs("second", "192.168.10.91")
	e.waitEvent("ConfigMap", "config", "ConfigLoaded", "1 address pools")
	if v := c.metric(t, "herald_pool_in_use_addresses", map[string]string{"pool": "default", "family": "IPv4"}); v != 2 {
		t.Errorf("herald_pool_in_use_addresses = %v, want 2", v)
	}
	if v := c.metric(t, "herald_pool_capacity_addresses", map[string]string{"pool": "default"}); v != 11 {
		t.Errorf("herald_pool_capacity_addresses = %v, want 11", v)
	}
	if err := c.Ready(); err != nil {
		t.Errorf("Ready: %v", err)
	}
	// One status write per assignment: what is written must read back as equal (the API
	// server defaults ipMode), or every Service is written twice.
	time.Sleep(300 * time.Millisecond)
	if v := c.metric(t, "herald_controller_allocations_total", map[string]string{"result": "assigned"}); v != 2 {
		t.Errorf("%v status writes for 2 assignments", v)
	}
}

func TestLeavesOtherClassesAndTypesAlone(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	// Another implementation's Service, already given an address by it.
	other := e.create("other", withClass("example.com/other-lb"))
	other.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.168.10.95"}}
	if _, err := e.client.CoreV1().Services(e.ns).UpdateStatus(context.Background(), other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.create("cluster-ip", withType(corev1.ServiceTypeClusterIP))
	e.create("ours-explicit", withClass(k8s.DefaultLoadBalancerClass))
	e.start(e.options())
	e.waitIPs("ours-explicit", "192.168.10.90")
	// Everything that was queued at start has been synced by now; a resync cannot
	// change the picture, so look once more after the next Service.
	e.create("later")
	e.waitIPs("later", "192.168.10.91")
	if got := ingressIPs(e.get("other")); !slices.Equal(got, []string{"192.168.10.95"}) {
		t.Errorf("another class's status was changed to %v", got)
	}
	if got := ingressIPs(e.get("cluster-ip")); got != nil {
		t.Errorf("a ClusterIP Service got %v", got)
	}
	if n := len(e.events("Service", "other", "IPAllocated")); n != 0 {
		t.Errorf("%d Events on another class's Service", n)
	}
}

func TestDualStack(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(`
address-pools:
- name: v4only
  protocol: layer2
  addresses: [192.168.30.1/32]
- name: dual
  protocol: layer2
  addresses: [192.168.10.90-192.168.10.100, "fc00:f853:ccd:e799::/124"]
`)
	e.start(e.options())
	e.create("both", dualStack(corev1.IPFamilyPolicyRequireDualStack, corev1.IPv6Protocol, corev1.IPv4Protocol))
	e.waitIPs("both", "fc00:f853:ccd:e799::", "192.168.10.90")
	e.create("v6", dualStack(corev1.IPFamilyPolicySingleStack, corev1.IPv6Protocol))
	e.waitIPs("v6", "fc00:f853:ccd:e799::1")
	e.create("prefer", dualStack(corev1.IPFamilyPolicyPreferDualStack, corev1.IPv4Protocol, corev1.IPv6Protocol),
		withAnnotation(k8s.AnnotationAddressPool, "v4only"))
	e.waitIPs("prefer", "192.168.30.1") // the pool has no IPv6: prefer settles for one family
}

func TestRequestedAddress(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	e.start(e.options())
	e.create("by-spec", func(s *corev1.Service) { s.Spec.LoadBalancerIP = "192.168.10.99" })
	e.waitIPs("by-spec", "192.168.10.99")
	e.create("by-metallb-annotation", withAnnotation("metallb.universe.tf/loadBalancerIPs", "192.168.10.98"))
	e.waitIPs("by-metallb-annotation", "192.168.10.98")
	e.create("taken", withAnnotation(k8s.AnnotationLoadBalancerIPs, "192.168.10.99"))
	e.waitEvent("Service", "taken", "IPUnavailable", "192.168.10.99 is held by")
	e.create("outside", withAnnotation(k8s.AnnotationLoadBalancerIPs, "10.1.2.3"))
	e.waitEvent("Service", "outside", "IPUnavailable", "10.1.2.3 is in no pool")
	e.create("garbage", withAnnotation(k8s.AnnotationLoadBalancerIPs, "192.168.10.300"))
	e.waitEvent("Service", "garbage", "InvalidRequest", `herald.dev/loadBalancerIPs: "192.168.10.300" is not an IP address`)
	e.create("no-pool", withAnnotation("metallb.universe.tf/address-pool", "gold"))
	e.waitEvent("Service", "no-pool", "UnknownPool", `pool "gold" does not exist`)
	for _, name := range []string{"taken", "outside", "garbage", "no-pool"} {
		if got := ingressIPs(e.get(name)); got != nil {
			t.Errorf("%s got %v", name, got)
		}
	}
	// Moving the request moves the address, and frees the old one.
	svc := e.get("by-spec")
	svc.Spec.LoadBalancerIP = "192.168.10.97"
	if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitIPs("by-spec", "192.168.10.97")
	e.waitIPs("taken", "192.168.10.99")
}

func TestSharing(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	e.start(e.options())
	e.create("dns-tcp", withAnnotation(k8s.AnnotationAllowSharedIP, "dns"), withPorts(53))
	e.waitIPs("dns-tcp", "192.168.10.90")
	e.create("dns-udp", withAnnotation("metallb.universe.tf/allow-shared-ip", "dns"), func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
	})
	e.waitIPs("dns-udp", "192.168.10.90")
	// Same key, clashing port: its own address.
	e.create("dns-tcp-2", withAnnotation(k8s.AnnotationAllowSharedIP, "dns"), withPorts(53))
	e.waitIPs("dns-tcp-2", "192.168.10.91")
	// Asking for the shared address with a clashing port is a conflict, said in an Event.
	e.create("clash", withAnnotation(k8s.AnnotationAllowSharedIP, "dns"), withPorts(53),
		withAnnotation(k8s.AnnotationLoadBalancerIPs, "192.168.10.90"))
	e.waitEvent("Service", "clash", "SharingConflict", "port TCP/53 on 192.168.10.90 is already used")
	// Local traffic policy with another selector may not join.
	e.create("local", withAnnotation(k8s.AnnotationAllowSharedIP, "dns"), withPorts(8053),
		withAnnotation(k8s.AnnotationLoadBalancerIPs, "192.168.10.90"),
		func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal })
	e.waitEvent("Service", "local", "SharingConflict", "externalTrafficPolicy Local")
	if got := ingressIPs(e.get("clash")); got != nil {
		t.Errorf("clash got %v", got)
	}
}

func TestPoolExhaustedAndRelease(t *testing.T) {
	e := newEnv(t)
	e.applyConfig("address-pools:\n- {name: tiny, protocol: layer2, addresses: [192.168.10.90-192.168.10.91]}\n")
	c := e.start(e.options())
	e.create("a")
	e.waitIPs("a", "192.168.10.90")
	e.create("b")
	e.waitIPs("b", "192.168.10.91")
	e.create("c")
	e.waitEvent("Service", "c", "PoolExhausted", `pool "tiny" has no free IPv4 address`)
	// Touching the Service again re-syncs it but records nothing new.
	for i := range 3 {
		svc := e.get("c")
		svc.Labels = map[string]string{"touch": fmt.Sprint(i)}
		if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if evs := e.events("Service", "c", "PoolExhausted"); len(evs) != 1 || evs[0].Count != 1 {
		t.Errorf("PoolExhausted recorded %d Events (count %d), want one, once", len(evs), evs[0].Count)
	}
	if v := c.metric(t, "herald_controller_allocations_total", map[string]string{"result": "pool_exhausted"}); v != 1 {
		t.Errorf("pool_exhausted failures = %v, want 1", v)
	}
	// Deleting a frees its address for the waiting c.
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitIPs("c", "192.168.10.90")
	// Turning b into a ClusterIP Service clears its status and frees its address.
	svc := e.get("b")
	svc.Spec.Type = corev1.ServiceTypeClusterIP
	svc.Spec.Ports[0].NodePort = 0
	if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitIPs("b")
	e.waitEvent("Service", "b", "IPReleased", "Released")
	e.create("d")
	e.waitIPs("d", "192.168.10.91")
}

func TestBadConfigKeepsTheLastGood(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	c := e.start(e.options())
	e.create("a")
	e.waitIPs("a", "192.168.10.90")

	e.applyConfig("address-pools:\n- name: default\n  protocol: layer3\n  addresses: [192.168.10.90-192.168.10.100]\n")
	e.waitEvent("ConfigMap", "config", "InvalidConfig", `address-pools[0].protocol (line 3): must be layer2 or bgp: "layer3"`)
	if v := c.metric(t, "herald_config_stale", nil); v != 1 {
		t.Errorf("herald_config_stale = %v, want 1", v)
	}
	// The old pools still serve.
	e.create("b")
	e.waitIPs("b", "192.168.10.91")

	// A config that drops addresses in use is refused, too.
	e.applyConfig("address-pools:\n- {name: default, protocol: layer2, addresses: [192.168.10.95-192.168.10.100]}\n")
	e.waitEvent("ConfigMap", "config", "ConfigRefused", "192.168.10.90 (held by "+e.ns+"/a)")
	e.create("c")
	e.waitIPs("c", "192.168.10.92")
	if got := ingressIPs(e.get("a")); !slices.Equal(got, []string{"192.168.10.90"}) {
		t.Errorf("a's address changed to %v", got)
	}

	// A good config is taken, and a Service waiting on no pool is served from it.
	e.applyConfig(issueConfig + "- {name: extra, protocol: layer2, auto-assign: false, addresses: [10.20.0.0/30]}\n")
	e.waitEvent("ConfigMap", "config", "ConfigLoaded", "2 address pools")
	if v := c.metric(t, "herald_config_stale", nil); v != 0 {
		t.Errorf("herald_config_stale = %v, want 0", v)
	}
	e.create("d", withAnnotation(k8s.AnnotationAddressPool, "extra"))
	e.waitIPs("d", "10.20.0.0")
}

// A MetalLB 0.12 configuration with BFD echo mode is put in force, as MetalLB would, and
// a Warning Event on the ConfigMap says that Herald runs BFD without echo.
func TestConfigWarning(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig + "bfd-profiles:\n- {name: fast, receive-interval: 100, echo-mode: true}\n")
	e.start(e.options())
	e.waitEvent("ConfigMap", "config", "ConfigLoaded", "1 address pools")
	ev := e.waitEvent("ConfigMap", "config", "ConfigWarning", `bfd-profiles[0].echo-mode (line`)
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "asynchronous") {
		t.Errorf("ConfigWarning Event %s: %q", ev.Type, ev.Message)
	}
	e.create("a")
	e.waitIPs("a", "192.168.10.90")
}

func TestTruncateOnCharacterBoundary(t *testing.T) {
	s := strings.Repeat("é", 600) // 1200 bytes
	got := truncate(s, 1024)
	if len(got) > 1024 || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("truncate: %d bytes, valid UTF-8 %v, ends %q", len(got), utf8.ValidString(got), got[len(got)-5:])
	}
}

func TestNoConfigYet(t *testing.T) {
	e := newEnv(t)
	c := e.start(e.options())
	e.create("early")
	e.waitEvent("Service", "early", "NoConfiguration", "no valid configuration")
	if err := c.Ready(); err == nil {
		t.Error("Ready with no configuration")
	}
	e.applyConfig(issueConfig)
	e.waitIPs("early", "192.168.10.90")
}

func createMany(t *testing.T, e *env, prefix string, n int) {
	t.Helper()
	if _, err := k8stest.CreateServices(context.Background(), e.client, n, func(i int) *corev1.Service {
		return newService(e.ns, fmt.Sprintf("%s-%03d", prefix, i))
	}); err != nil {
		t.Fatalf("create: %v", err)
	}
}

// assignedIPs waits until n Services have an address and returns the addresses by
// Service, failing if any address is held twice.
func (e *env) assignedIPs(n int) map[string]string {
	e.t.Helper()
	var got map[string]string
	e.eventually(60*time.Second, func() (bool, string) {
		list, err := e.client.CoreV1().Services(e.ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		got = map[string]string{}
		owner := map[string]string{}
		for _, s := range list.Items {
			for _, ip := range ingressIPs(&s) {
				if o, dup := owner[ip]; dup {
					e.t.Fatalf("%s is held by both %s and %s", ip, o, s.Name)
				}
				owner[ip] = s.Name
				got[s.Name] = ip
			}
		}
		return len(got) == n, fmt.Sprintf("%d of %d Services have an address", len(got), n)
	})
	return got
}

func TestRestartChangesNothing(t *testing.T) {
	e := newEnv(t)
	e.applyConfig("address-pools:\n- {name: big, protocol: layer2, addresses: [10.30.0.0/23]}\n")
	first := e.start(e.options())
	createMany(t, e, "svc", 200)
	before := e.assignedIPs(200)
	list, _ := e.client.CoreV1().Services(e.ns).List(context.Background(), metav1.ListOptions{})
	versions := map[string]string{}
	for _, s := range list.Items {
		versions[s.Name] = s.ResourceVersion
	}
	first.stop()

	// While the controller is down, one Service goes and a new one comes; the new one must
	// not be given an address some other Service still holds.
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "svc-000", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	freed := before["svc-000"]
	delete(before, "svc-000")
	e.create("newcomer")
	e.start(e.options())
	// Deleted while the controller was down, it waited, address and all, for the
	// controller to release it (its finalizer).
	e.waitGone("svc-000")
	after := e.assignedIPs(200)
	// The 200 lowest addresses were in use, so the freed one is now the lowest free.
	if after["newcomer"] != freed {
		t.Errorf("newcomer got %s, want the freed %s", after["newcomer"], freed)
	}
	for name, ip := range before {
		if after[name] != ip {
			t.Errorf("%s changed address from %s to %s across a restart", name, ip, after[name])
		}
	}
	list, _ = e.client.CoreV1().Services(e.ns).List(context.Background(), metav1.ListOptions{})
	for _, s := range list.Items {
		if !finalized(&s) {
			t.Errorf("%s has no cleanup finalizer", s.Name)
		}
		if v, ok := versions[s.Name]; ok && v != s.ResourceVersion {
			t.Errorf("%s was written again after the restart", s.Name)
		}
	}
}

func TestTwoReplicasNeverDoubleAssign(t *testing.T) {
	e := newEnv(t)
	e.applyConfig("address-pools:\n- {name: p, protocol: layer2, addresses: [10.40.0.0/24]}\n")
	timings := leader.Timings{LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond}
	type replica struct {
		cancel context.CancelFunc
		done   chan error
		led    chan struct{}
	}
	startReplica := func(id string) *replica {
		opts := e.options()
		c, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := &replica{cancel: cancel, done: make(chan error, 1), led: make(chan struct{})}
		go func() {
			r.done <- leader.Run(ctx, e.client, e.ns, "herald-controller", id, timings, opts.Logger, func(ctx context.Context) error {
				close(r.led)
				return c.Run(ctx)
			})
		}()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	a := startReplica("a")
	<-a.led
	b := startReplica("b")
	createMany(t, e, "x", 40)
	e.assignedIPs(40)
	select {
	case <-b.led:
		t.Fatal("the standby led while the leader held the lease")
	default:
	}
	// The leader goes; the standby takes over and serves, keeping every address.
	before := e.assignedIPs(40)
	a.cancel()
	if err := <-a.done; err != nil {
		t.Fatalf("leader: %v", err)
	}
	a.done <- nil
	select {
	case <-b.led:
	case <-time.After(10 * time.Second):
		t.Fatal("the standby did not take over")
	}
	createMany(t, e, "y", 40)
	after := e.assignedIPs(80)
	for name, ip := range before {
		if after[name] != ip {
			t.Errorf("%s moved from %s to %s on failover", name, ip, after[name])
		}
	}
}

// ipModes returns the ipMode of each ingress entry.
func ipModes(s *corev1.Service) []string {
	var out []string
	for _, in := range s.Status.LoadBalancer.Ingress {
		if in.IPMode == nil {
			out = append(out, "<unset>")
		} else {
			out = append(out, string(*in.IPMode))
		}
	}
	return out
}

func TestIPModeFollowsForwarding(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(`
address-pools:
- {name: forwarded, protocol: layer2, addresses: [192.168.10.90-192.168.10.91]}
- {name: plain, protocol: layer2, forwarding: none, auto-assign: false, addresses: [192.168.20.90/32]}
`)
	e.start(e.options())
	e.create("fwd")
	e.create("plain", withAnnotation(k8s.AnnotationAddressPool, "plain"))
	e.waitIPs("fwd", "192.168.10.90")
	e.waitIPs("plain", "192.168.20.90")
	e.eventually(5*time.Second, func() (bool, string) {
		f, p := ipModes(e.get("fwd")), ipModes(e.get("plain"))
		return slices.Equal(f, []string{"Proxy"}) && slices.Equal(p, []string{"VIP"}), fmt.Sprintf("ipModes %v and %v, want [Proxy] and [VIP]", f, p)
	})
	// Turning forwarding off everywhere hands the address to kube-proxy: ipMode VIP,
	// and the address does not change.
	e.applyConfig(`
forwarding: none
address-pools:
- {name: forwarded, protocol: layer2, addresses: [192.168.10.90-192.168.10.91]}
- {name: plain, protocol: layer2, auto-assign: false, addresses: [192.168.20.90/32]}
`)
	e.eventually(5*time.Second, func() (bool, string) {
		f := ipModes(e.get("fwd"))
		return slices.Equal(f, []string{"VIP"}), fmt.Sprintf("ipMode %v after forwarding: none, want [VIP]", f)
	})
	e.waitIPs("fwd", "192.168.10.90")
	if n := len(e.events("Service", "fwd", "IPAllocated")); n != 1 {
		t.Errorf("%d IPAllocated Events for one address whose ipMode changed, want 1", n)
	}
}

func TestUnknownSchedulerGetsOneEvent(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	e.start(e.options())
	e.create("web", withAnnotation(k8s.AnnotationIPVSScheduler, "fastest"))
	e.waitIPs("web", "192.168.10.90") // the address is given all the same
	ev := e.waitEvent("Service", "web", "InvalidForwarding", `herald.dev/ipvs-scheduler="fastest"`)
	if ev.Type != corev1.EventTypeWarning {
		t.Errorf("Event type %q", ev.Type)
	}
	// Another change to the Service does not repeat the Event.
	svc := e.get("web")
	svc.Labels = map[string]string{"touched": "yes"}
	if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if evs := e.events("Service", "web", "InvalidForwarding"); len(evs) != 1 || evs[0].Count > 1 {
		t.Errorf("the Event was repeated: %d Events", len(evs))
	}
}

func finalized(s *corev1.Service) bool { return slices.Contains(s.Finalizers, CleanupFinalizer) }

// waitGone waits until the Service no longer exists.
func (e *env) waitGone(name string) {
	e.t.Helper()
	e.eventually(10*time.Second, func() (bool, string) {
		s, err := e.client.CoreV1().Services(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		return false, fmt.Sprintf("Service %s still exists, finalizers %v, deletionTimestamp %v", name, s.Finalizers, s.DeletionTimestamp)
	})
}

// waitFinalizer waits until the Service has (or has not) the cleanup finalizer.
func (e *env) waitFinalizer(name string, want bool) {
	e.t.Helper()
	e.eventually(10*time.Second, func() (bool, string) {
		s := e.get(name)
		return finalized(s) == want, fmt.Sprintf("Service %s has finalizers %v, want %s: %v", name, s.Finalizers, CleanupFinalizer, want)
	})
}

func (e *env) setType(name string, typ corev1.ServiceType) {
	e.t.Helper()
	svc := e.get(name)
	svc.Spec.Type = typ
	for i := range svc.Spec.Ports {
		svc.Spec.Ports[i].NodePort = 0
	}
	if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		e.t.Fatalf("change Service %s to %s: %v", name, typ, err)
	}
}

// The lifecycle upstream's "should handle load balancer cleanup finalizer" spec walks,
// and what it implies: a deleted Service gives its address back before it disappears.
func TestCleanupFinalizer(t *testing.T) {
	e := newEnv(t)
	e.applyConfig("address-pools:\n- {name: one, protocol: layer2, addresses: [192.168.10.90/32]}\n")
	e.start(e.options())
	e.create("first")
	e.waitIPs("first", "192.168.10.90")
	if s := e.get("first"); !finalized(s) {
		t.Errorf("a Service with an address lacks the finalizer: %v", s.Finalizers)
	}
	e.create("waiting")
	e.waitEvent("Service", "waiting", "PoolExhausted", "no free IPv4 address")
	e.waitFinalizer("waiting", true) // the finalizer comes before the address

	// Deleting it releases the address, and the Service goes.
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "first", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("first")
	e.waitIPs("waiting", "192.168.10.90")
	e.waitEvent("Service", "first", "IPReleased", "being deleted")

	// ClusterIP: status and finalizer go; LoadBalancer again: both come back.
	e.setType("waiting", corev1.ServiceTypeClusterIP)
	e.waitIPs("waiting")
	e.waitFinalizer("waiting", false)
	e.setType("waiting", corev1.ServiceTypeLoadBalancer)
	e.waitFinalizer("waiting", true)
	e.waitIPs("waiting", "192.168.10.90")

	// Another finalizer is left alone, and the Service waits for its owner.
	svc := e.get("waiting")
	svc.Finalizers = append(svc.Finalizers, "example.com/keep")
	if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "waiting", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitFinalizer("waiting", false)
	if s := e.get("waiting"); !slices.Equal(s.Finalizers, []string{"example.com/keep"}) || len(s.Status.LoadBalancer.Ingress) != 0 {
		t.Errorf("deleted Service has finalizers %v and ingress %v, want [example.com/keep] and none", s.Finalizers, ingressIPs(s))
	}
	e.create("next")
	e.waitIPs("next", "192.168.10.90")
}

// Another class's Service gets no finalizer, and its deletion is not held up.
func TestCleanupFinalizerLeavesOtherClassesAlone(t *testing.T) {
	e := newEnv(t)
	e.applyConfig(issueConfig)
	e.start(e.options())
	other := e.create("other", withClass("example.com/other-lb"))
	other.Finalizers = []string{CleanupFinalizer} // what the other implementation put there
	if _, err := e.client.CoreV1().Services(e.ns).Update(context.Background(), other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.create("plain", withClass("example.com/other-lb"))
	e.create("cluster-ip", withType(corev1.ServiceTypeClusterIP))
	e.create("ours")
	e.waitIPs("ours", "192.168.10.90")
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Everything queued so far has been synced once the next Service has its address.
	e.create("later")
	e.waitIPs("later", "192.168.10.91")
	if s := e.get("other"); !finalized(s) {
		t.Errorf("Herald removed another class's finalizer: %v", s.Finalizers)
	}
	for _, name := range []string{"plain", "cluster-ip"} {
		if s := e.get(name); len(s.Finalizers) != 0 {
			t.Errorf("%s got finalizers %v", name, s.Finalizers)
		}
	}
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "plain", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("plain")
}

// A Service deleted while the controller was down stays until the next controller has
// released its address, which then goes to a Service waiting for one.
func TestDeletedWhileDown(t *testing.T) {
	e := newEnv(t)
	e.applyConfig("address-pools:\n- {name: one, protocol: layer2, addresses: [192.168.10.90/32]}\n")
	first := e.start(e.options())
	e.create("a")
	e.waitIPs("a", "192.168.10.90")
	e.waitFinalizer("a", true)
	first.stop()
	if err := e.client.CoreV1().Services(e.ns).Delete(context.Background(), "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.create("b")
	time.Sleep(200 * time.Millisecond)
	if s := e.get("a"); s.DeletionTimestamp == nil || !slices.Equal(ingressIPs(s), []string{"192.168.10.90"}) {
		t.Fatalf("with no controller, the deleted Service should wait with its address: deletionTimestamp %v, ingress %v", s.DeletionTimestamp, ingressIPs(s))
	}
	e.start(e.options())
	e.waitGone("a")
	e.waitIPs("b", "192.168.10.90")
}
