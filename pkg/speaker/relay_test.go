package speaker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/plan"
	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/transport"
)

// relayRec records what the speaker hands the relay; fail makes Set fail; left makes it
// install all but that many routes, as a kernel that cannot take them does.
type relayRec struct {
	mu     sync.Mutex
	routes []relay.Route
	sets   int
	fail   atomic.Bool
	left   atomic.Int32
}

func (r *relayRec) Set(rs []relay.Route) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets++
	if r.fail.Load() {
		return errors.New("nftables: operation not permitted")
	}
	r.routes = slices.Clone(rs)
	if n := int(r.left.Load()); n > 0 {
		return &relay.Partial{Left: n, Err: errors.New("relay to r9 (10.99.0.1): network is unreachable")}
	}
	return nil
}

func (r *relayRec) Resync() {}

// nodes returns the nodes the relay hands flows to.
func (r *relayRec) nodes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	set := map[string]bool{}
	for _, rt := range r.routes {
		set[rt.Node+"@"+rt.Via.String()] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// stuckRelay is a relay whose Set blocks until released.
type stuckRelay struct {
	calls   atomic.Int32
	release chan struct{}
}

func (r *stuckRelay) Set([]relay.Route) error {
	r.calls.Add(1)
	<-r.release
	return nil
}

func (r *stuckRelay) Resync() {}

// The owner of a Local Service's address hands the other nodes with a ready endpoint
// their share, as endpoints, members and affinity change; a failing relay is that part's
// alone, and a speaker stopping removes what it relayed.
func TestRelayFollowsEndpointsAndMembers(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ns := inForce(t, c, `
forwarding: none
relay-local: true
address-pools:
- {name: l2, protocol: layer2, addresses: [192.168.50.90-192.168.50.99]}
`)
	for i, n := range []string{"r1", "r2", "r3"} {
		createNode(t, c, n, fmt.Sprintf("10.0.5.%d", i+1), true)
	}
	members := &fakeMembers{meta: map[string][]byte{}, changed: make(chan struct{}, 1)}
	for _, n := range []string{"r1", "r2", "r3"} {
		members.set(n, false)
	}
	live := newFakeLiveness()
	rec := &relayRec{}
	l2 := &layer2Rec{}
	s, err := New(Options{Client: coreClient(t), NodeName: "r1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: l2,
		Members: members, Liveness: live, Relay: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	// One Service per address until r1 owns one (the election hashes the address).
	var svc *corev1.Service
	for i := range 10 {
		name := fmt.Sprintf("web%d", i)
		svc = createService(t, c, ns, name, fmt.Sprintf("192.168.50.%d", 90+i), func(s *corev1.Service) {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		})
		createEndpoints(t, c, ns, name, map[string]string{"10.244.1." + fmt.Sprint(i): "r1", "10.244.2." + fmt.Sprint(i): "r2", "10.244.3." + fmt.Sprint(i): "r3"})
		owned := false
		eventually(t, func() (bool, string) {
			st := s.latest.Load()
			if st == nil {
				return false, "no plan yet"
			}
			for _, d := range st.d.Decisions {
				if d.Service == ns+"/"+name {
					owned = d.Owner == "r1"
					return d.Owner != "", "no owner yet"
				}
			}
			return false, "not planned yet"
		})
		if owned {
			break
		}
	}
	wantNodes := func(want ...string) {
		t.Helper()
		eventually(t, func() (bool, string) {
			got := rec.nodes()
			return slices.Equal(got, want), fmt.Sprintf("relays to %v, want %v", got, want)
		})
	}
	wantNodes("r2@10.0.5.2", "r3@10.0.5.3")

	// r3 goes silent: its share comes back to r1 at once.
	live.kill("r3", liveness.Silent)
	wantNodes("r2@10.0.5.2")
	live.set(map[string]liveness.Reason{})
	wantNodes("r2@10.0.5.2", "r3@10.0.5.3")

	// ClientIP affinity: every flow stays with r1's own endpoint.
	update := func(mod func(*corev1.Service)) {
		t.Helper()
		cur, err := c.CoreV1().Services(ns).Get(context.Background(), svc.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mod(cur)
		if _, err := c.CoreV1().Services(ns).Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
	wantNodes()
	update(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityNone })
	wantNodes("r2@10.0.5.2", "r3@10.0.5.3")

	// A relay that can install only part of the plan reports it and keeps following the
	// plan: the part is not failing (no backoff between plans), and the metrics count
	// what is relayed and what is left with this node.
	// Two plans in a row, each followed at once.
	twoPlans := func() {
		t.Helper()
		live.kill("r3", liveness.Silent)
		wantNodes("r2@10.0.5.2")
		live.set(map[string]liveness.Reason{})
		wantNodes("r2@10.0.5.2", "r3@10.0.5.3")
	}
	rec.left.Store(1)
	twoPlans()
	eventually(t, func() (bool, string) {
		failing := testutil.ToFloat64(s.metrics.PartFailing.WithLabelValues("relay"))
		relayed, left := testutil.ToFloat64(s.metrics.Relayed), testutil.ToFloat64(s.metrics.RelayLeftOut)
		want := float64(len(s.latest.Load().d.Relay))
		return failing == 0 && left == 1 && relayed == want-1,
			fmt.Sprintf("partial relay: part failing %v, relayed %v, left out %v; want 0, %v, 1", failing, relayed, left, want-1)
	})
	rec.left.Store(0)
	twoPlans()
	eventually(t, func() (bool, string) {
		left := testutil.ToFloat64(s.metrics.RelayLeftOut)
		return left == 0, fmt.Sprintf("%v ranges left out after a whole relay", left)
	})

	// A failing relay fails its part only; layer 2 still answers.
	rec.fail.Store(true)
	live.kill("r2", liveness.Silent)
	eventually(t, func() (bool, string) {
		st := s.latest.Load()
		return len(st.d.Relay) > 0 && slices.Contains(l2.addrs(), st.d.Layer2[0].IP) && st.in.Silent["r2"], "layer 2 did not follow the plan while the relay fails"
	})
	rec.fail.Store(false)
	wantNodes("r3@10.0.5.3")

	// Stopping withdraws the relay.
	stop()
	if got := rec.nodes(); len(got) != 0 {
		t.Errorf("after stop the relay still hands flows to %v", got)
	}
}

func TestRelayGained(t *testing.T) {
	a := relay.Route{VIP: netip.MustParseAddr("192.168.50.90"), Proto: transport.TCP, Port: 80, From: 1, To: 8192, Via: netip.MustParseAddr("10.0.5.2"), Node: "r2"}
	b := a
	b.From, b.To = 32768, 33314
	a2 := a
	a2.Via, a2.Node = netip.MustParseAddr("10.0.5.3"), "r3"
	snap := func(rs ...relay.Route) *snapshot { return &snapshot{d: plan.Desired{Relay: rs}} }
	for _, tc := range []struct {
		name string
		prev *snapshot
		now  []relay.Route
		want bool
	}{
		{"nothing", nil, nil, false},
		{"first plan", nil, []relay.Route{a}, true},
		{"same", snap(a, b), []relay.Route{a, b}, false},
		{"one removed", snap(a, b), []relay.Route{a}, false},
		{"one added", snap(a), []relay.Route{a, b}, true},
		{"moved to another node", snap(a, b), []relay.Route{a2, b}, true},
	} {
		if got := relayGained(tc.prev, tc.now); got != tc.want {
			t.Errorf("%s: relayGained = %v, want %v", tc.name, got, tc.want)
		}
	}
}
