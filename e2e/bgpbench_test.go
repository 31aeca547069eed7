package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/hack/cluster"
)

func report(b *testing.B, name string, took []time.Duration) {
	slices.Sort(took)
	b.ReportMetric(float64(took[0].Milliseconds()), "ms-"+name+"-min")
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-"+name+"-median")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-"+name+"-max")
}

// BenchmarkBGP measures with FRR as the router, HERALD_BGP_RUNS times (default 10):
// from creating a Service to its route in the router's table with all three next hops
// (the controller's assignment included), and from a speaker's SIGTERM to the router
// dropping that node's path. Run: go test ./e2e -run '^$' -bench 'BGP$' -benchtime 1x
func BenchmarkBGP(b *testing.B) {
	runs, _ := strconv.Atoi(envOr("HERALD_BGP_RUNS", "10"))
	c := start(b, Options{Config: bgpConfig, Router: frr})
	all := []string{"192.168.10.11", "192.168.10.12", "192.168.10.13"}
	ctx := context.Background()
	for b.Loop() {
		var create, withdraw []time.Duration
		for i := range runs {
			name := fmt.Sprintf("web-%d", i)
			start := time.Now()
			ips := c.CreateService(name, nil)
			waitHops(b, c.Router, ips[0].String()+"/32", all, 30*time.Second)
			create = append(create, time.Since(start))

			n := c.Nodes[i%len(c.Nodes)]
			start = time.Now()
			c.Signal(n, syscall.SIGTERM)
			waitHops(b, c.Router, ips[0].String()+"/32", slices.DeleteFunc(slices.Clone(all), func(h string) bool { return h == n.IP4 }), 10*time.Second)
			withdraw = append(withdraw, time.Since(start))
			c.StopSpeaker(n, syscall.SIGKILL)
			c.StartSpeaker(n)
			waitHops(b, c.Router, ips[0].String()+"/32", all, 30*time.Second)
			if err := c.Kube.CoreV1().Services("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		report(b, "create-to-route", create)
		report(b, "sigterm-to-withdrawal", withdraw)
	}
}

const bgpManyConfig = `
forwarding: none
peers:
- {peer-address: 192.168.10.1, peer-asn: 64500, my-asn: 64501}
address-pools:
- name: routed
  protocol: bgp
  addresses: [10.88.0.0/22]
`

// BenchmarkBGPThousandServices measures the time from creating 1,000 Services at once to
// the router holding a route for every one of them.
func BenchmarkBGPThousandServices(b *testing.B) {
	c := start(b, Options{Config: bgpManyConfig, Router: frr})
	for b.Loop() {
		start := time.Now()
		c.createMany(b, 1000)
		assigned := time.Since(start)
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			out, err := c.Router.VTY("show bgp ipv4 unicast summary json")
			if err == nil && cluster.RoutesReceived(out) >= 3000 { // three nodes' paths for each
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the router holds %d paths after 2 minutes", cluster.RoutesReceived(out))
			}
		}
		b.ReportMetric(assigned.Seconds(), "s-all-assigned")
		b.ReportMetric(time.Since(start).Seconds(), "s-all-routes-at-router")
	}
}
