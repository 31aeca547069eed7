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

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/hack/cluster"
	"github.com/heraldlb/herald/hack/netlab"
)

func report(b *testing.B, name string, took []time.Duration) {
	slices.Sort(took)
	b.ReportMetric(float64(took[0].Milliseconds()), "ms-"+name+"-min")
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-"+name+"-median")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-"+name+"-max")
}

// BenchmarkBGP measures with FRR as the router (bfdd at 100 ms × 3, hold time 9 s),
// HERALD_BGP_RUNS rounds (default 10), each timed by the router's kernel routing table as
// zebra writes it:
//   - advertise: from the controller sending the status write (that the API server
//     accepts) to the route holding all three nodes' next hops;
//   - sigterm: from a speaker's SIGTERM to its next hop leaving the route;
//   - linkcut: from a node's link going down to its next hop leaving the route.
//
// and, by bgpd's own log of the UPDATEs it receives (microsecond timestamps), the same
// starts to the last of the three nodes' UPDATEs in (advertise-bgpd) and to the
// withdrawal in (sigterm-bgpd): what Herald takes, without FRR's own processing (bgpd
// holds its route-processing queue 50 ms before it runs, zebra 10 ms more). It also
// reports a speaker's memory with its sessions up: its own RSS and its BGP process's.
//
// Run (root): go test ./e2e -run '^$' -bench 'BGP$' -benchtime 1x
// HERALD_E2E_SPEAKER=PATH measures another speaker binary (an older Herald) the same way.
func BenchmarkBGP(b *testing.B) {
	runs, _ := strconv.Atoi(envOr("HERALD_BGP_RUNS", "10"))
	netlab.Require(b)
	c := Start(b, benchSpeaker(), bfdOptions())
	routes := c.Router.WatchRoutes()
	c.waitSessions(b, 30*time.Second)
	// An older speaker without BFD: its cut links are timed all the same (by the hold time).
	m, _ := c.Metrics(c.Nodes[0])
	withBFD := strings.Contains(m, "herald_bfd_session_up")
	if withBFD {
		c.waitBFD(b, "up", c.Nodes, 30*time.Second)
	}
	for b.Loop() {
		// Memory with BGP on: the speaker's, and its BGP process's (an older speaker that
		// embeds GoBGP has none).
		rss, _, _ := c.rss(c.Nodes[0])
		b.ReportMetric(rss, "MiB-rss-speaker")
		if bgpRSS := c.metric(c.Nodes[0], "herald_bgp_process_resident_memory_bytes"); bgpRSS > 0 {
			b.ReportMetric(bgpRSS/(1<<20), "MiB-rss-bgp-process")
		}
		var advertise, sigterm, linkcut, advertiseBGPD, sigtermBGPD []time.Duration
		for i := range runs {
			name := fmt.Sprintf("web-%d", i)
			prefix, written, took := c.advertised(b, routes, name)
			advertise = append(advertise, took)
			var last time.Time
			for _, n := range c.Nodes {
				if in, ok := c.Router.Received(prefix.String(), n.IP4, written.Add(-time.Second), false); ok && in.After(last) {
					last = in
				}
			}
			advertiseBGPD = append(advertiseBGPD, last.Sub(written))

			n := c.Nodes[i%len(c.Nodes)]
			start, took := c.stopped(b, routes, prefix, n)
			sigterm = append(sigterm, took)
			if in, ok := c.Router.Received(prefix.String(), n.IP4, start, true); ok {
				sigtermBGPD = append(sigtermBGPD, in.Sub(start))
			} else {
				b.Errorf("bgpd got no withdrawal of %s from %s: the session closed first", prefix, n.Name)
			}
			c.restarted(b, routes, prefix, n)

			n = c.Nodes[(i+1)%len(c.Nodes)]
			if withBFD {
				c.waitBFD(b, "up", []*Node{n}, 30*time.Second)
			}
			start = time.Now()
			n.NS.Run("ip", "link", "set", "eth0", "down")
			linkcut = append(linkcut, routes.Wait(b, prefix, without(allHops, n.IP4), 15*time.Second).Sub(start))
			n.NS.Run("ip", "link", "set", "eth0", "up")
			routes.Wait(b, prefix, allHops, 30*time.Second)
			c.deleted(b, routes, prefix, name)
			b.Logf("round %d: advertise %v (bgpd %v), sigterm %v, linkcut %v", i, advertise[i].Round(100*time.Microsecond), advertiseBGPD[i].Round(100*time.Microsecond),
				sigterm[i].Round(100*time.Microsecond), linkcut[i].Round(100*time.Microsecond))
		}
		reportMicros(b, "advertise", advertise)
		reportMicros(b, "advertise-bgpd", advertiseBGPD)
		reportMicros(b, "sigterm", sigterm)
		if len(sigtermBGPD) > 0 {
			reportMicros(b, "sigterm-bgpd", sigtermBGPD)
		}
		reportMicros(b, "linkcut", linkcut)
	}
}

// advertised creates Service name and returns its prefix, when the controller sent its
// status write, and how long from then the router's kernel took to route it through
// all three nodes.
func (c *Cluster) advertised(b *testing.B, routes *cluster.RouteWatch, name string) (netip.Prefix, time.Time, time.Duration) {
	b.Helper()
	prefix := netip.PrefixFrom(c.CreateService(name, nil)[0], 32)
	at := routes.Wait(b, prefix, allHops, 30*time.Second)
	written := c.StatusWritten("default", name)
	return prefix, written, at.Sub(written)
}

// stopped sends n's speaker SIGTERM and returns when, and how long until the router's
// kernel routed prefix without n.
func (c *Cluster) stopped(b *testing.B, routes *cluster.RouteWatch, prefix netip.Prefix, n *Node) (time.Time, time.Duration) {
	b.Helper()
	start := time.Now()
	c.Signal(n, syscall.SIGTERM)
	return start, routes.Wait(b, prefix, without(allHops, n.IP4), 10*time.Second).Sub(start)
}

// restarted starts n's speaker again and waits until prefix goes through all three nodes.
func (c *Cluster) restarted(b *testing.B, routes *cluster.RouteWatch, prefix netip.Prefix, n *Node) {
	b.Helper()
	c.StopSpeaker(n, syscall.SIGKILL)
	c.StartSpeaker(n)
	routes.Wait(b, prefix, allHops, 30*time.Second)
}

// deleted deletes Service name and waits until the router's kernel has no route for prefix.
func (c *Cluster) deleted(b *testing.B, routes *cluster.RouteWatch, prefix netip.Prefix, name string) {
	b.Helper()
	if err := c.Kube.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		b.Fatal(err)
	}
	routes.Wait(b, prefix, nil, 10*time.Second)
}

const birdConfig = `
forwarding: none
peers:
- {peer-address: 192.168.10.3, peer-asn: 64500, my-asn: 64501, hold-time: 9s}
address-pools:
- name: routed
  protocol: bgp
  addresses: [198.51.100.0/24]
`

// BenchmarkBGPBIRD is BenchmarkBGP's advertise and SIGTERM rounds with BIRD 2 as the
// router, which exports each change to its kernel as it happens (FRR holds it about 60 ms):
// this is how soon a router can forward by Herald's routes.
// Run (root): go test ./e2e -run '^$' -bench 'BGPBIRD' -benchtime 1x
func BenchmarkBGPBIRD(b *testing.B) {
	runs, _ := strconv.Atoi(envOr("HERALD_BGP_RUNS", "10"))
	netlab.Require(b)
	c := Start(b, benchSpeaker(), Options{Config: birdConfig})
	bird := c.StartBIRDRouter()
	routes := bird.WatchRoutes(b)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, _ := bird.Show("show protocols")
		if strings.Count(out, "Established") == len(c.Nodes) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("BIRD's sessions:\n%s", out)
		}
	}
	for b.Loop() {
		var advertise, sigterm []time.Duration
		for i := range runs {
			name := fmt.Sprintf("web-%d", i)
			prefix, _, took := c.advertised(b, routes, name)
			advertise = append(advertise, took)
			n := c.Nodes[i%len(c.Nodes)]
			_, took = c.stopped(b, routes, prefix, n)
			sigterm = append(sigterm, took)
			c.restarted(b, routes, prefix, n)
			c.deleted(b, routes, prefix, name)
			b.Logf("round %d: advertise %v, sigterm %v", i, advertise[i].Round(100*time.Microsecond), sigterm[i].Round(100*time.Microsecond))
		}
		reportMicros(b, "advertise", advertise)
		reportMicros(b, "sigterm", sigterm)
	}
}

// waitSessions waits until the router's IPv4 sessions with every node are established.
func (c *Cluster) waitSessions(t testing.TB, limit time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(100 * time.Millisecond) {
		st, err := c.Router.Sessions()
		up := 0
		for _, n := range c.Nodes {
			if st[n.IP4] == "Established" {
				up++
			}
		}
		if up == len(c.Nodes) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router's sessions after %v: %v (%v)", limit, st, err)
		}
	}
}

// reportMicros reports min, median and max in milliseconds with a tenth's precision.
func reportMicros(b *testing.B, name string, took []time.Duration) {
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()/100) / 10 }
	b.ReportMetric(ms(took[0]), "ms-"+name+"-min")
	b.ReportMetric(ms(took[len(took)/2]), "ms-"+name+"-median")
	b.ReportMetric(ms(took[len(took)-1]), "ms-"+name+"-max")
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
