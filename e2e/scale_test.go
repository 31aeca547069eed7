package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

const manyConfig = `
forwarding: none
address-pools:
- name: many
  protocol: layer2
  interfaces: [eth0]
  addresses: [10.77.0.0/22]
`

// createMany creates n LoadBalancer Services at once and waits until all have an address.
func (c *Cluster) createMany(t testing.TB, n int) { c.createManyFrom(t, 0, n) }

// createManyFrom creates n more Services, numbered from first, and waits until all
// Services have an address.
func (c *Cluster) createManyFrom(t testing.TB, first, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := k8stest.CreateServices(ctx, c.Kube, n, func(i int) *corev1.Service {
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("svc-%04d", first+i)},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "x"}, AllocateLoadBalancerNodePorts: ptr.To(false), // no NodePort range holds 5,000
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}},
		}
	}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		list, err := c.Kube.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		have := 0
		for _, s := range list.Items {
			if len(s.Status.LoadBalancer.Ingress) > 0 {
				have++
			}
		}
		if have == first+n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d Services have an address", have, first+n)
		}
	}
}

// announced returns how many addresses n's speaker answers for, from its metrics.
func (c *Cluster) announced(n *Node) int {
	return int(c.metric(n, "herald_layer2_announced_addresses"))
}

// waitAnnounced waits until the speakers between them announce want addresses.
func (c *Cluster) waitAnnounced(t testing.TB, want int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		total := 0
		for _, n := range c.Nodes {
			total += c.announced(n)
		}
		if total == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the speakers announce %d of %d addresses", total, want)
		}
	}
}

// moveAll kills the speaker of victim and returns how long it took until the client had
// seen a gratuitous ARP from another node for every address victim owned.
func (c *Cluster) moveAll(t testing.TB, victim *Node, sig syscall.Signal) (int, time.Duration) {
	t.Helper()
	owned := c.announced(victim)
	if owned <= 0 {
		t.Fatalf("%s announces %d addresses", victim.Name, owned)
	}
	if err := c.Probe.GrowARPBuffer(16 << 20); err != nil {
		t.Fatal(err)
	}
	dropsBefore, _ := c.Probe.ARPDrops()
	start := time.Now()
	c.Signal(victim, sig)
	seen := map[netip.Addr]bool{}
	deadline := start.Add(30 * time.Second)
	for len(seen) < owned && time.Now().Before(deadline) {
		p, err := c.Probe.ReadARP(time.Until(deadline), func(p *arp.Packet) bool {
			return p.Operation == arp.OperationRequest && p.SenderIP == p.TargetIP && p.SenderHardwareAddr.String() != victim.MAC
		})
		if err != nil {
			break
		}
		seen[p.SenderIP] = true
	}
	took := time.Since(start)
	drops, _ := c.Probe.ARPDrops()
	if len(seen) < owned {
		t.Fatalf("gratuitous ARP seen for %d of the %d addresses %s owned after %s (kernel drops %d)", len(seen), owned, victim.Name, took, drops-dropsBefore)
	}
	return owned, took
}

// With a thousand Services, a speaker that dies moves a third of the addresses at once:
// every one of them is announced by its new owner, in one sync, not one work item each.
func TestLayer2ThousandServicesMove(t *testing.T) {
	c := start(t, Options{Config: manyConfig})
	c.createMany(t, 1000)
	c.waitAnnounced(t, 1000)
	owned, took := c.moveAll(t, c.Nodes[0], syscall.SIGKILL)
	t.Logf("crash of %s: all %d of its addresses re-announced by other nodes %s after", c.Nodes[0].Name, owned, took.Round(time.Millisecond))
	// The survivors now announce all of them between them.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if c.announced(c.Nodes[1])+c.announced(c.Nodes[2]) == 1000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("survivors announce %d + %d", c.announced(c.Nodes[1]), c.announced(c.Nodes[2]))
		}
	}
}

// BenchmarkFailover measures failover as a client sees it: from taking the owner's
// speaker out (SIGTERM, then SIGKILL) to the client's first TCP connection answered by
// the new owner, HERALD_FAILOVER_RUNS times each (default 10). It reports min, median
// and max in ms. Run: go test ./e2e -run '^$' -bench Failover -benchtime 1x
func BenchmarkFailover(b *testing.B) {
	runs := 10
	if v, err := strconv.Atoi(envOr("HERALD_FAILOVER_RUNS", "10")); err == nil && v > 0 {
		runs = v
	}
	c := start(b, Options{})
	ip := c.CreateService("web", nil)[0]
	for b.Loop() {
		for _, how := range []string{"graceful", "crash", "link down"} {
			var took []time.Duration
			for range runs {
				_, _, d := c.failover(b, ip, how)
				took = append(took, d)
			}
			slices.Sort(took)
			name := strings.ReplaceAll(how, " ", "-")
			b.ReportMetric(float64(took[0].Milliseconds()), "ms-"+name+"-min")
			b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-"+name+"-median")
			b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-"+name+"-max")
		}
	}
}

// BenchmarkThousandServicesMove reports how long it takes, with 1,000 Services, until
// every address of a crashed speaker has been re-announced by another node.
func BenchmarkThousandServicesMove(b *testing.B) {
	c := start(b, Options{Config: manyConfig})
	c.createMany(b, 1000)
	c.waitAnnounced(b, 1000)
	for b.Loop() {
		owned, took := c.moveAll(b, c.Nodes[0], syscall.SIGKILL)
		b.ReportMetric(float64(owned), "addresses-moved")
		b.ReportMetric(float64(took.Milliseconds()), "ms-all-reannounced")
	}
}
