package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/hack/cluster"
	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/inspect"
)

// bfdConfig peers every node with the router over IPv4 with BFD at 100 ms × 3, and a hold
// time of 9 s: without BFD, a cut link would keep its path for 9 s.
const bfdConfig = `
forwarding: none
peers:
- {peer-address: 192.168.10.1, peer-asn: 64500, my-asn: 64501, hold-time: 9s, bfd-profile: fast}
bfd-profiles:
- {name: fast, receive-interval: 100, transmit-interval: 100, detect-multiplier: 3}
address-pools:
- name: routed
  protocol: bgp
  addresses: [198.51.100.0/24]
`

// bfdOptions is a cluster whose FRR runs bfdd with the same profile for every node, and
// logs the UPDATEs it receives.
func bfdOptions() Options {
	return Options{
		Config: bfdConfig,
		Router: func(nodes []*Node) string {
			return cluster.FRRLogUpdates + FRRConfig(nodes, "neighbor NODES timers 3 9", "neighbor NODES bfd", "neighbor NODES bfd profile fast")
		},
		RouterBFD: BFDDConfig("fast", 100, 100, 3),
	}
}

var allHops = []string{"192.168.10.11", "192.168.10.12", "192.168.10.13"}

func without(hops []string, hop string) []string {
	return slices.DeleteFunc(slices.Clone(hops), func(h string) bool { return h == hop })
}

// waitBFD waits until the router's bfdd and every speaker see each BFD session in state
// ("up" or "down").
func (c *Cluster) waitBFD(t testing.TB, state string, nodes []*Node, limit time.Duration) {
	t.Helper()
	var peers map[string]string
	var err error
	for deadline := time.Now().Add(limit); ; time.Sleep(100 * time.Millisecond) {
		peers, err = c.Router.BFDPeers()
		agree := 0
		for _, n := range nodes {
			m, _ := c.Metrics(n)
			ses := inspect.Sessions(m)
			if err == nil && peers[n.IP4] == state && len(ses) == 1 && ses[0].BFD == state {
				agree++
			}
		}
		if agree == len(nodes) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("BFD sessions not all %s after %v: the router's %v (%v)", state, limit, peers, err)
		}
	}
}

// TestBFDWithFRR runs Herald's BFD against FRR's bfdd: the sessions come up at the
// profile's pace; a node whose link is cut loses its path at the router within the BFD
// detection time, not the hold time; when the router's bfdd dies, Herald resets its BGP
// sessions and says so; a profile Herald cannot honour is refused with its field.
func TestBFDWithFRR(t *testing.T) {
	c := start(t, bfdOptions())
	routes := c.Router.WatchRoutes()
	ip := c.CreateService("web", nil)[0]
	prefix := netip.PrefixFrom(ip, 32)
	routes.Wait(t, prefix, allHops, 30*time.Second)
	c.waitBFD(t, "up", c.Nodes, 30*time.Second)
	// Once up, the sessions stay up: both sides agree on the 100 ms pace. (FRR re-creates
	// its side once as each BGP session comes up, binding it to its local address: that
	// takes BFD down and up again, and must not reset BGP.)
	time.Sleep(2 * time.Second)
	for _, n := range c.Nodes {
		if resets := c.metricWith(n, "herald_bgp_session_resets_total", `reason="bfd_down"`); resets > 0 {
			t.Errorf("%s reset its BGP session %v times on a healthy link", n.Name, resets)
		}
		if downs := c.metricWith(n, "herald_bfd_session_changes_total", `state="down"`); downs > 1 {
			t.Errorf("%s's BFD session went down %v times on a healthy link", n.Name, downs)
		}
	}

	// A cut link: the router's bfdd finds node1 silent after 3 × 100 ms and bgpd drops its
	// path; with the 9 s hold time alone it would stay for 9 s.
	n := c.Nodes[0]
	cut := time.Now()
	n.NS.Run("ip", "link", "set", "eth0", "down")
	gone := routes.Wait(t, prefix, without(allHops, n.IP4), 8*time.Second).Sub(cut)
	t.Logf("node1's link cut: its path left the router's kernel %v later (BFD 3 × 100ms; hold time 9s)", gone.Round(time.Millisecond))
	if gone > 3*time.Second {
		t.Errorf("the path stayed %v after the link was cut: BFD did not take it down", gone)
	}
	// Herald's side found the silence too, and reset its BGP session.
	for deadline := time.Now().Add(5 * time.Second); c.metricWith(n, "herald_bgp_session_resets_total", `reason="bfd_down"`) < 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node1's speaker did not reset its BGP session when BFD went down")
		}
	}
	n.NS.Run("ip", "link", "set", "eth0", "up")
	routes.Wait(t, prefix, allHops, 30*time.Second)
	c.waitBFD(t, "up", c.Nodes, 30*time.Second)

	// bfdd dies without a word: every speaker's BFD session falls silent, and each resets
	// its BGP session, with an Event on its Node.
	c.Router.KillBFDD()
	for _, n := range c.Nodes {
		for deadline := time.Now().Add(10 * time.Second); c.metricWith(n, "herald_bgp_session_resets_total", `reason="bfd_down"`) < 2-boolF(n != c.Nodes[0]); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s's speaker did not reset its BGP session when the router's bfdd died", n.Name)
			}
		}
		c.nodeEvent(t, n, "BFDSessionDown", "BFD session with 192.168.10.1 down (control_detection_time_expired): BGP session reset")
	}
	if log, _ := os.ReadFile(filepath.Join(c.LogDir(), c.Nodes[1].Name+"-speaker.log")); !strings.Contains(string(log), "BFD session down: resetting the BGP session") {
		t.Errorf("node2's log does not say why it reset its session:\n%s", lastLines(string(log), "BFD", 5))
	}
	c.Router.StartBFDD()
	c.waitBFD(t, "up", c.Nodes, 30*time.Second)
	routes.Wait(t, prefix, allHops, 30*time.Second)

	// Echo mode Herald does not do, but MetalLB 0.12 accepts it: the configuration goes in
	// force everywhere, a Warning Event names the field, and the sessions stay up,
	// asynchronous.
	echo := strings.Replace(bfdConfig, "detect-multiplier: 3}", "detect-multiplier: 3, echo-mode: true}", 1)
	c.SetConfig(echo)
	c.configEvent(t, "ConfigWarning", "bfd-profiles[0].echo-mode")
	want := config.Hash([]byte(echo))
	for _, n := range c.Nodes {
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			m, err := c.Metrics(n)
			if err == nil && inspect.InForceHash(m) == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s runs %q (%v), want the echo-mode configuration %s", n.Name, inspect.InForceHash(m), err, want)
			}
		}
	}
	c.waitBFD(t, "up", c.Nodes, 5*time.Second)
}

func boolF(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricWith returns the value of the first sample of name on n whose labels contain
// labels (as `key="value"`), -1 when there is none.
func (c *Cluster) metricWith(n *Node, name, labels string) float64 {
	m, err := c.Metrics(n)
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(m, "\n") {
		if rest, ok := strings.CutPrefix(l, name+"{"); ok && strings.Contains(rest, labels) {
			var v float64
			if _, err := fmt.Sscan(rest[strings.LastIndex(rest, " ")+1:], &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// nodeEvent waits for the speaker's Event of reason on n's Node, with a message
// containing msg.
func (c *Cluster) nodeEvent(t testing.TB, n *Node, reason, msg string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		evs, err := c.Kube.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + n.Name + ",reason=" + reason})
		if err == nil && slices.ContainsFunc(evs.Items, func(e corev1.Event) bool { return strings.Contains(e.Message, msg) }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event on Node %s saying %q", reason, n.Name, msg)
		}
	}
}
