package speaker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/layer2"
	"github.com/heraldlb/herald/pkg/leaktest"
	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/transport"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

// The fakes below record what the speaker asks of its adapters; the adapters themselves
// are tested against the kernel (pkg/layer2 in namespaces, pkg/forward in the VM).

type forwardRec struct {
	mu      sync.Mutex
	last    []forward.Service
	sets    int
	resyncs int
}

func (f *forwardRec) Set(s []forward.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last, f.sets = slices.Clone(s), f.sets+1
	return nil
}

func (f *forwardRec) Resync() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resyncs++
}

func (f *forwardRec) state() ([]forward.Service, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.last), f.resyncs
}

type layer2Rec struct {
	mu          sync.Mutex
	owned       []layer2.Address
	reannounced int
}

func (l *layer2Rec) Set(o []layer2.Address) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.owned = slices.Clone(o)
}

func (l *layer2Rec) Reannounce() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reannounced++
}

type fakeMembers struct {
	mu      sync.Mutex
	meta    map[string][]byte
	changed chan struct{}
}

func (m *fakeMembers) Alive() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.meta))
}

func (m *fakeMembers) AliveMeta() map[string][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.meta)
}

func (m *fakeMembers) Changed() <-chan struct{} { return m.changed }

func (m *fakeMembers) SetMeta([]byte) error { return nil }

func (m *fakeMembers) set(name string, ipvs bool) {
	m.mu.Lock()
	m.meta[name] = MemberMeta{IPVS: ipvs}.Encode()
	m.mu.Unlock()
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// run runs s until the returned stop is called (once or more) or the test ends.
func run(t *testing.T, s *Speaker) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	var why string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var ok bool
		if ok, why = cond(); ok {
			return
		}
	}
	t.Fatal(why)
}

func createNode(t *testing.T, c kubernetes.Interface, name, ip string, ready bool) {
	t.Helper()
	ctx := context.Background()
	n, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}) })
	setNode(t, c, n, ip, ready)
}

func setNode(t *testing.T, c kubernetes.Interface, n *corev1.Node, ip string, ready bool) {
	t.Helper()
	status := corev1.ConditionTrue
	if !ready {
		status = corev1.ConditionFalse
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createService creates a LoadBalancer Service with one TCP port "http" 80 → 8080 and
// publishes ip in its status, as the controller would.
func createService(t *testing.T, c kubernetes.Interface, ns, name, ip string, mod func(*corev1.Service)) *corev1.Service {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if mod != nil {
		mod(svc)
	}
	svc, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}) })
	svc.Status.LoadBalancer.Ingress = k8s.Ingress([]netip.Addr{netip.MustParseAddr(ip)}, true)
	if svc, err = c.CoreV1().Services(ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return svc
}

// createEndpoints publishes ready endpoints (address → node) for the Service's port http.
func createEndpoints(t *testing.T, c kubernetes.Interface, ns, svc string, eps map[string]string) {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, addr := range slices.Sorted(maps.Keys(eps)) {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: ptr.To(eps[addr]), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// inForce makes a namespace holding text as the configuration in force (as the
// controller publishes it) and returns its name; the ConfigMap goes with the test.
func inForce(t *testing.T, c kubernetes.Interface, text string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "speaker-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	name := k8s.ConfigRef{Namespace: ns.Name}.InForce().Name
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: name}, Data: map[string]string{"config": text}}
	if _, err := c.CoreV1().ConfigMaps(ns.Name).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CoreV1().ConfigMaps(ns.Name).Delete(ctx, name, metav1.DeleteOptions{}) })
	return ns.Name
}

func rs(addrPorts ...string) []forward.RealServer {
	var out []forward.RealServer
	for _, s := range addrPorts {
		ap := netip.MustParseAddrPort(s)
		out = append(out, forward.RealServer{Addr: ap.Addr(), Port: ap.Port()})
	}
	return out
}

// TestForwarding runs a speaker against the real API server and checks the virtual
// services it hands the forwarder as Services, endpoints, nodes and members change.
func TestForwarding(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	ns := inForce(t, c, `
address-pools:
- {name: fwd, protocol: layer2, addresses: [192.168.10.90-192.168.10.99]}
- {name: plain, protocol: layer2, forwarding: none, addresses: [192.168.20.90-192.168.20.99]}
`)
	createNode(t, c, "n1", "10.0.0.1", true)
	createNode(t, c, "n2", "10.0.0.2", true)
	createNode(t, c, "n3", "10.0.0.3", true)

	// n1 is the only node that can forward: it owns every address of the pool fwd.
	members := &fakeMembers{meta: map[string][]byte{}, changed: make(chan struct{}, 1)}
	members.set("n1", true)
	members.set("n2", false)
	members.set("n3", false)
	fwd, l2 := &forwardRec{}, &layer2Rec{}
	s, err := New(Options{Client: coreClient(t), NodeName: "n1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: l2,
		Members: members, Forward: fwd, ResyncPeriod: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)

	cluster := createService(t, c, ns, "cluster", "192.168.10.90", func(s *corev1.Service) {
		s.Annotations = map[string]string{k8s.AnnotationIPVSScheduler: "wrr"}
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
		s.Spec.LoadBalancerSourceRanges = []string{"10.9.0.0/16"}
	})
	np := uint16(cluster.Spec.Ports[0].NodePort)
	createEndpoints(t, c, ns, "cluster", map[string]string{"10.244.1.7": "n1", "10.244.2.7": "n2"})
	createService(t, c, ns, "local", "192.168.10.91", func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	createEndpoints(t, c, ns, "local", map[string]string{"10.244.1.5": "n1", "10.244.2.5": "n2"})
	createService(t, c, ns, "direct", "192.168.10.92", func(s *corev1.Service) {
		s.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
	})
	createEndpoints(t, c, ns, "direct", map[string]string{"10.244.1.6": "n1", "10.244.3.6": "n3"})
	createService(t, c, ns, "plain", "192.168.20.90", nil) // forwarding none: kube-proxy's

	addr := netip.MustParseAddr
	cmpOpts := []cmp.Option{cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.EquateEmpty()}
	wantSet := func(want []forward.Service) func() (bool, string) {
		return func() (bool, string) {
			got, _ := fwd.state()
			diff := cmp.Diff(want, got, cmpOpts...)
			return diff == "", "forwarder's state (-want +got):\n" + diff
		}
	}
	clusterSvc := forward.Service{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP, Scheduler: "wrr", Persistence: 10 * time.Minute,
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, Masquerade: true,
		// This node (n1) by its own pod: IPVS would hand its own NodePort to the local stack
		// past kube-proxy's DNAT.
		RealServers: rs(fmt.Sprintf("10.0.0.2:%d", np), fmt.Sprintf("10.0.0.3:%d", np), "10.244.1.7:8080")}
	localSvc := forward.Service{VIP: addr("192.168.10.91"), Port: 80, Proto: transport.TCP, Scheduler: "rr", RealServers: rs("10.244.1.5:8080")}
	directSvc := forward.Service{VIP: addr("192.168.10.92"), Port: 80, Proto: transport.TCP, Scheduler: "rr", Masquerade: true, RealServers: rs("10.244.1.6:8080", "10.244.3.6:8080")}
	eventually(t, wantSet([]forward.Service{clusterSvc, localSvc, directSvc}))

	// A node going NotReady loses its real server.
	n3, err := c.CoreV1().Nodes().Get(ctx, "n3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setNode(t, c, n3, "10.0.0.3", false)
	clusterSvc.RealServers = rs(fmt.Sprintf("10.0.0.2:%d", np), "10.244.1.7:8080")
	eventually(t, wantSet([]forward.Service{clusterSvc, localSvc, directSvc}))

	// The kernel is compared in full every resync period.
	eventually(t, func() (bool, string) {
		_, n := fwd.state()
		return n >= 2, fmt.Sprintf("%d resyncs", n)
	})

	// If no node can forward, n1 gives the addresses up rather than draw their traffic.
	members.set("n1", false)
	eventually(t, wantSet(nil))
	l2.mu.Lock()
	owned := slices.Clone(l2.owned)
	l2.mu.Unlock()
	for _, o := range owned {
		if o.IP != addr("192.168.20.90") { // the pool that does not forward may be n1's
			t.Errorf("n1 without IPVS answers for %s", o.IP)
		}
	}

	// On shutdown nothing is left forwarded.
	members.set("n1", true)
	eventually(t, wantSet([]forward.Service{clusterSvc, localSvc, directSvc}))
	stop()
	if got, _ := fwd.state(); len(got) != 0 {
		t.Errorf("after shutdown the forwarder holds %d services", len(got))
	}
}

// TestCannotForwardIsReported checks the Event on the Node of a speaker without IPVS.
func TestCannotForwardIsReported(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	createNode(t, c, "noipvs", "10.0.0.9", true)
	s, err := New(Options{Client: coreClient(t), NodeName: "noipvs", Layer2: &layer2Rec{}, ForwardErr: errors.New("IPVS is not available (is the ip_vs module loaded?)")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	eventually(t, func() (bool, string) {
		evs, err := c.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=noipvs,reason=IPVSUnavailable"})
		if err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && e.Source.Component == "herald-speaker" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no IPVSUnavailable Event on Node noipvs (%d Events)", len(evs.Items))
	})
}

// Run returns only once every goroutine it started (the runner, informers, the Event
// broadcaster) has ended.
func TestRunLeavesNoGoroutine(t *testing.T) {
	c := kubernetes.NewForConfigOrDie(k8stest.Shared(t).Config)
	createNode(t, c, "leak", "10.0.0.8", true)
	s, err := New(Options{Client: coreClient(t), NodeName: "leak", Layer2: &layer2Rec{}, Forward: &forwardRec{}})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	eventually(t, func() (bool, string) {
		for _, synced := range s.synced {
			if !synced() {
				return false, "caches not synced"
			}
		}
		return true, ""
	})
	stop()
	leaktest.Check(t, "github.com/heraldlb/herald/pkg/speaker.(*Speaker)", "github.com/heraldlb/herald/pkg/runner.",
		"github.com/heraldlb/herald/pkg/k8s.", "k8s.io/client-go/tools/cache.", "k8s.io/apimachinery/pkg/watch.")
}

// coreClient is the speaker's own API client, on the shared test API server.
func coreClient(t *testing.T) *k8s.Core {
	t.Helper()
	c, err := k8s.NewCore(k8stest.Shared(t).Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestForwardingEndpoints runs a speaker of a pool with forwarding: endpoints against the
// real API server: the forwarder gets the pods themselves; a node whose speaker goes
// silent leaves at once (its Node still Ready, memberlist still listing it), one whose
// speaker crashed stays; a Service with nowhere to go is refused, with an Event.
func TestForwardingEndpoints(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ns := inForce(t, c, `
forwarding: endpoints
address-pools:
- {name: direct, protocol: layer2, addresses: [192.168.10.90-192.168.10.99]}
`)
	createNode(t, c, "e1", "10.0.1.1", true)
	createNode(t, c, "e2", "10.0.1.2", true)
	createNode(t, c, "e3", "10.0.1.3", true)
	members := &fakeMembers{meta: map[string][]byte{}, changed: make(chan struct{}, 1)}
	members.set("e1", true)
	members.set("e2", false)
	members.set("e3", false)
	live := &fakeLiveness{changed: make(chan struct{}, 1)}
	fwd := &forwardRec{}
	s, err := New(Options{Client: coreClient(t), NodeName: "e1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: &layer2Rec{},
		Members: members, Liveness: live, Forward: fwd})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	createService(t, c, ns, "web", "192.168.10.90", nil)
	createEndpoints(t, c, ns, "web", map[string]string{"10.244.1.5": "e1", "10.244.2.5": "e2", "10.244.3.5": "e3"})
	createService(t, c, ns, "empty", "192.168.10.91", nil)

	addr := netip.MustParseAddr
	web := forward.Service{VIP: addr("192.168.10.90"), Port: 80, Proto: transport.TCP, Scheduler: "rr", Masquerade: true,
		RealServers: rs("10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080")}
	empty := forward.Service{VIP: addr("192.168.10.91"), Port: 80, Proto: transport.TCP, Scheduler: "rr", Masquerade: true}
	wantSet := func(want []forward.Service) func() (bool, string) {
		return func() (bool, string) {
			got, _ := fwd.state()
			diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.EquateEmpty())
			return diff == "", "forwarder's state (-want +got):\n" + diff
		}
	}
	eventually(t, wantSet([]forward.Service{web, empty}))
	eventually(t, func() (bool, string) {
		evs, err := c.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=empty,reason=" + k8s.ReasonNoLiveEndpoints})
		if err != nil {
			return false, err.Error()
		}
		return len(evs.Items) > 0 && evs.Items[0].Type == corev1.EventTypeWarning, fmt.Sprintf("%d NoLiveEndpoints Events on Service empty", len(evs.Items))
	})

	// e3 goes silent, e2's speaker crashes: e3's pod leaves, e2's stays.
	live.set(map[string]liveness.Reason{"e2": liveness.Closed, "e3": liveness.Silent})
	web.RealServers = rs("10.244.1.5:8080", "10.244.2.5:8080")
	eventually(t, wantSet([]forward.Service{web, empty}))
	// memberlist drops both and the detector forgets them: e3 stays out until heard.
	members.mu.Lock()
	delete(members.meta, "e2")
	delete(members.meta, "e3")
	members.mu.Unlock()
	live.set(nil)
	time.Sleep(200 * time.Millisecond)
	eventually(t, wantSet([]forward.Service{web, empty}))
	members.set("e3", false)
	web.RealServers = rs("10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080")
	eventually(t, wantSet([]forward.Service{web, empty}))
}
