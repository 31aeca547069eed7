package speaker

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// steps records, in order, what the BGP speaker and the forwarder are asked.
type steps struct {
	mu  sync.Mutex
	log []string
}

func (s *steps) add(f string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, fmt.Sprintf(f, args...))
}

func (s *steps) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string{}, s.log...)
}

type bgpRec struct{ *steps }

func (b bgpRec) SetPeers(_ context.Context, p []bgp.Peer) error { return nil }
func (b bgpRec) SetRoutes(_ context.Context, r []bgp.Route) error {
	b.add("routes %d", len(r))
	return nil
}

type fwdRec struct{ *steps }

func (f fwdRec) Set(s []forward.Service) error { f.add("forward %d", len(s)); return nil }
func (f fwdRec) Resync()                       {}

// A stopping speaker withdraws its BGP routes before anything else (the routers hold the
// other nodes' paths), and only then removes its forwarding; session changes become
// Events on its Node.
func TestStopWithdrawsRoutesFirst(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	ns := inForce(t, c, `
peers:
- {peer-address: 10.0.0.254, peer-asn: 64500, my-asn: 64501}
address-pools:
- {name: routed, protocol: bgp, addresses: [198.51.100.0/24]}
`)
	createNode(t, c, "bgp1", "10.0.0.21", true)
	rec := &steps{}
	s, err := New(Options{Client: coreClient(t), NodeName: "bgp1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: &layer2Rec{},
		BGP: bgpRec{rec}, Forward: fwdRec{rec}})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	createService(t, c, ns, "web", "198.51.100.5", nil)
	// BGP and forwarding are parts of their own, applied in no order between them: wait
	// until both hold the Service.
	eventually(t, func() (bool, string) {
		l := rec.all()
		return slices.Contains(l, "routes 1") && slices.Contains(l, "forward 1"), fmt.Sprintf("steps %v", l)
	})
	s.SessionChanged(bgp.SessionEvent{Peer: netip.MustParseAddr("10.0.0.254"), State: bgp.BFDDown, Reason: "control_detection_time_expired"})
	eventually(t, func() (bool, string) {
		evs, err := c.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=bgp1,reason=" + k8s.ReasonBFDSessionDown})
		if err != nil || len(evs.Items) == 0 {
			return false, fmt.Sprintf("no BFDSessionDown Event on the Node (%v)", err)
		}
		return evs.Items[0].Message == "node bgp1: BFD session with 10.0.0.254 down (control_detection_time_expired): BGP session reset", evs.Items[0].Message
	})
	before := len(rec.all())
	stop()
	after := rec.all()[before:]
	withdrawn, unforwarded := -1, -1
	for i, st := range after {
		if st == "routes 0" && withdrawn < 0 {
			withdrawn = i
		}
		if st == "forward 0" {
			unforwarded = i
		}
	}
	if withdrawn < 0 || unforwarded < 0 || withdrawn > unforwarded {
		t.Fatalf("on stop: %v; want the routes withdrawn before the forwarding goes", after)
	}
}

// A forwarder stuck in the kernel does not keep a stopping speaker running (its layer 2
// answering for addresses the others took over): Run returns within shutdownTimeout,
// and the BGP routes are still withdrawn.
func TestStopIsBoundedWhateverTheForwarderDoes(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ns := inForce(t, c, `
peers:
- {peer-address: 10.0.0.254, peer-asn: 64500, my-asn: 64501}
address-pools:
- {name: routed, protocol: bgp, addresses: [198.51.101.0/24]}
`)
	createNode(t, c, "bgpstuck1", "10.0.0.31", true)
	rec := &steps{}
	fwd := &stuckForwarder{release: make(chan struct{})}
	s, err := New(Options{Client: coreClient(t), NodeName: "bgpstuck1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: &layer2Rec{},
		BGP: bgpRec{rec}, Forward: fwd})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	t.Cleanup(func() { close(fwd.release) }) // before run's stop, should the test fail
	createService(t, c, ns, "web", "198.51.101.5", nil)
	eventually(t, func() (bool, string) {
		return slices.Contains(rec.all(), "routes 1") && fwd.calls.Load() > 0, fmt.Sprintf("steps %v, forwarder called %d times", rec.all(), fwd.calls.Load())
	})
	start := time.Now()
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatalf("Run still running %s after its context ended, the forwarder stuck", time.Since(start).Round(time.Millisecond))
	}
	if l := rec.all(); l[len(l)-1] != "routes 0" {
		t.Errorf("on stop: %v; want the routes withdrawn", l)
	}
}
