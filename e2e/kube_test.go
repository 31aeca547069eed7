package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/heraldlb/herald/hack/cluster"
	"github.com/heraldlb/herald/hack/helm"
	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/inspect"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/relay"
	"github.com/heraldlb/herald/pkg/transport"
)

// The configuration of the real cluster's tests: a layer-2 pool on the LAN, a BGP pool
// announced to the router, and forwarding: none (this kernel has no ip_vs: kube-proxy
// delivers, ipMode VIP), with relay-local (the owner of a Local Service's address hands
// the other nodes with a pod their share).
const kubeConfig = `forwarding: none
relay-local: true
peers:
- peer-address: 192.168.10.1
  peer-asn: 64500
  my-asn: 64501
address-pools:
- name: default
  protocol: layer2
  addresses: [192.168.10.90-192.168.10.100]
- name: bgp
  protocol: bgp
  auto-assign: false
  avoid-buggy-ips: true
  addresses: [198.51.100.0/24]
`

// kube brings up a real cluster (kubelets, containerd, kube-proxy, FRR) and installs
// Herald the way an admin does: kubectl apply -k of config/ through the lab's overlay,
// then the configuration and the demo application.
func kube(t testing.TB) *Cluster { return kubeWith(t, installKustomize) }

// How a test installs Herald into the real cluster.
type install int

const (
	installKustomize install = iota // kubectl apply -k hack/lab/overlay, then the ConfigMap
	installHelm                     // helm install charts/herald, the configuration as a value
)

func kubeWith(t testing.TB, how install) *Cluster {
	t.Helper()
	netlab.Require(t)
	c := Start(t, "", Options{Kubelets: true, Router: func(nodes []*Node) string { return FRRConfig(nodes) }})
	switch how {
	case installHelm:
		d, err := os.MkdirTemp("", "herald-values-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		values := filepath.Join(d, "values.yaml")
		text, _ := yaml.Marshal(map[string]string{"config": kubeConfig})
		if err := os.WriteFile(values, text, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Helm(helm.InstallArgs("../charts/herald", values)...); err != nil {
			t.Fatalf("helm install: %v\n%s", err, out)
		}
	default:
		if out, err := c.Kubectl("apply", "-k", "../hack/lab/overlay"); err != nil {
			t.Fatalf("kubectl apply -k: %v\n%s", err, out)
		}
	}
	if out, err := c.Kubectl("apply", "-f", "../hack/lab/demo.yaml", "-f", "../config/samples/service.yaml"); err != nil {
		t.Fatalf("kubectl apply the demo: %v\n%s", err, out)
	}
	if how == installKustomize {
		c.SetConfig(kubeConfig)
	}
	c.rollout(t, "herald-system", "deployment/herald-controller", "daemonset/herald-speaker")
	c.rollout(t, "default", "deployment/nginx")
	return c
}

func (c *Cluster) rollout(t testing.TB, ns string, objs ...string) {
	t.Helper()
	for _, o := range objs {
		if out, err := c.Kubectl("-n", ns, "rollout", "status", o, "--timeout=120s"); err != nil {
			t.Fatalf("rollout of %s: %v\n%s", o, err, out)
		}
	}
}

// apply applies a manifest given as text.
func (c *Cluster) apply(t *testing.T, manifest string) {
	t.Helper()
	// Not t.TempDir(): kubectl splits -f at commas, which subtest names hold.
	d, err := os.MkdirTemp("", "herald-manifest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(d)
	f := filepath.Join(d, "m.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v: %s\nof\n%s", err, strings.ReplaceAll(out, "\n", " "), manifest)
	}
}

// service is a LoadBalancer Service on port 8090 for the pods labelled app, with extra
// spec lines and annotations.
func service(name, app, spec, annotations string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: default\n  annotations: {%s}\nspec:\n  type: LoadBalancer\n  selector: {app: %s}\n  ports:\n  - {name: http, port: 8090, targetPort: 80}\n%s", name, annotations, app, spec)
}

// speakerPod returns the name of the speaker pod on node.
func (c *Cluster) speakerPod(t testing.TB, node string) string {
	t.Helper()
	pods, err := c.Kube.CoreV1().Pods("herald-system").List(context.Background(), metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=speaker", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			return p.Name
		}
	}
	t.Fatalf("no speaker pod on %s", node)
	return ""
}

// loop opens a connection to ip every 10 ms until stop is closed and counts the failures.
type loop struct {
	mu       sync.Mutex
	ok, fail int
	lastErr  error
	last     time.Time // when the last failure was
	done     chan struct{}
}

func (c *Cluster) connectLoop(ip netip.Addr, stop <-chan struct{}) *loop {
	l := &loop{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			_, err := c.Connect(ip, time.Second)
			l.mu.Lock()
			if err != nil {
				l.fail, l.lastErr = l.fail+1, err
			} else {
				l.ok++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// requestLoop starts a request to ip every interval, each with its own timeout, until stop
// is closed: a client on a schedule, so that a request that hangs does not hold back the
// next, and the failed share is a share of the schedule. It counts failures and when the
// last one was; at most 64 are in flight.
func (c *Cluster) requestLoop(ip netip.Addr, every, timeout time.Duration, stop <-chan struct{}) *loop {
	l := &loop{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		inFlight := make(chan struct{}, 64)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; n < 100_000; n++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			inFlight <- struct{}{}
			wg.Go(func() {
				defer func() { <-inFlight }()
				_, err := c.Connect(ip, timeout)
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					l.fail, l.lastErr = l.fail+1, err
					if now := time.Now(); now.After(l.last) {
						l.last = now
					}
				} else {
					l.ok++
				}
			})
		}
	}()
	return l
}

// lastFailure is when the last request failed (zero if none did).
func (l *loop) lastFailure() time.Time {
	<-l.done
	return l.last
}

func (l *loop) result() (ok, fail int, lastErr error) {
	<-l.done
	return l.ok, l.fail, l.lastErr
}

// takeover waits for the first gratuitous ARP for ip from a node other than from, and
// returns that node and the time since start.
func (c *Cluster) takeover(t testing.TB, ip netip.Addr, from *Node, start time.Time, limit time.Duration) (*Node, time.Duration) {
	t.Helper()
	p, err := c.Probe.ReadARP(limit, func(p *arp.Packet) bool {
		return p.SenderIP == ip && p.TargetIP == ip && p.SenderHardwareAddr.String() != from.MAC
	})
	if err != nil {
		t.Fatalf("no other node announced %s within %s after %s's speaker went: %v", ip, limit, from.Name, err)
	}
	return c.NodeByMAC(p.SenderHardwareAddr.String()), time.Since(start)
}

// settledOwner waits until the speakers see each other and exactly one node answers for
// ip, and returns it. A speaker that has just come back takes its addresses back: for a
// moment two nodes may answer, which is logged.
func (c *Cluster) settledOwner(t testing.TB, ip netip.Addr) *Node {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		members := 0
		for _, n := range c.Nodes {
			if m, err := c.Metrics(n); err == nil && strings.Contains(m, fmt.Sprintf("herald_speaker_members %d\n", len(c.Nodes))) {
				members++
			}
		}
		if members == len(c.Nodes) {
			got := c.Owners(ip, 300*time.Millisecond)
			if len(got) == 1 {
				return c.Node(got[0])
			}
			t.Logf("%s answered by %v", ip, got)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d speakers see all the others; owners %v", ip, members, c.Owners(ip, 300*time.Millisecond))
		}
	}
}

// TestRealCluster runs Herald as pods in a cluster of real kubelets and checks what a user
// sees, in steps that share the cluster.
func TestRealCluster(t *testing.T) { realCluster(t, kube(t)) }

// TestRealClusterHelm installs Herald with its Helm chart, as an admin who uses Helm
// does, runs the checks of TestRealCluster, and uninstalls it: helm uninstall leaves
// nothing of Herald in the cluster.
func TestRealClusterHelm(t *testing.T) {
	c := kubeWith(t, installHelm)
	if out, err := c.Helm("list", "--namespace", "default", "--short"); err != nil || strings.TrimSpace(out) != helm.Release {
		t.Fatalf("helm list: %q (%v), want the release %s", out, err, helm.Release)
	}
	realCluster(t, c)
	t.Run("helm uninstall removes every object of Herald", func(t *testing.T) {
		if out, err := c.Helm(helm.UninstallArgs()...); err != nil {
			t.Fatalf("helm uninstall: %v\n%s", err, out)
		}
		ctx := context.Background()
		var left []string
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
			left = c.heraldObjects(t, ctx)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("3 minutes after helm uninstall, the cluster still holds %v", left)
			}
		}
		if out, err := c.Helm("list", "--all-namespaces", "--deployed", "--failed", "--pending", "--uninstalling", "--short"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("helm list after uninstall: %q (%v)", out, err)
		}
		// The Services keep their addresses in their status, but no node answers for them.
		ip := c.WaitAddresses("default", "nginx")[0]
		if got := c.Owners(ip, time.Second); len(got) != 0 {
			t.Errorf("%s is still answered by %v after Herald was uninstalled", ip, got)
		}
	})
}

// heraldObjects lists what of Herald the cluster holds: its namespace (and so everything
// the controller made in it), its cluster-wide RBAC objects and its webhook.
func (c *Cluster) heraldObjects(t *testing.T, ctx context.Context) []string {
	t.Helper()
	var left []string
	if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, "herald-system", metav1.GetOptions{}); err == nil {
		left = append(left, "Namespace herald-system")
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	for _, name := range []string{"herald-controller", "herald-speaker"} {
		if _, err := c.Kube.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "ClusterRole "+name)
		}
		if _, err := c.Kube.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "ClusterRoleBinding "+name)
		}
	}
	if _, err := c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "herald-config", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "ValidatingWebhookConfiguration herald-config")
	}
	return left
}

// realCluster checks what a user sees of Herald installed in the real cluster c.
func realCluster(t *testing.T, c *Cluster) {
	ctx := context.Background()
	ip := c.WaitAddresses("default", "nginx")[0]

	t.Run("assigned, ipMode VIP, kube-proxy delivers to real pods", func(t *testing.T) {
		svc, err := c.Kube.CoreV1().Services("default").Get(ctx, "nginx", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		in := svc.Status.LoadBalancer.Ingress
		if len(in) != 1 || in[0].IPMode == nil || *in[0].IPMode != corev1.LoadBalancerIPModeVIP {
			t.Fatalf("status %+v, want one address with ipMode VIP", in)
		}
		c.reach(t, ip, "", 20*time.Second) // kube-proxy on the owner may lag the Service by a moment
		pods := map[string]bool{}
		for range 30 {
			who, err := c.Connect(ip, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			pods[who] = true
		}
		if len(pods) < 2 {
			t.Errorf("30 connections reached only %v: kube-proxy should spread them over the three pods", pods)
		}
	})

	t.Run("reachable from assignment on, never flapping", func(t *testing.T) {
		c.apply(t, service("late", "nginx", "", ""))
		addr := c.WaitAddresses("default", "late")[0]
		assigned := time.Now()
		var first time.Duration
		for deadline := assigned.Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := c.Connect(addr, 500*time.Millisecond); err == nil {
				first = time.Since(assigned)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not reachable 10 s after it was assigned", addr)
			}
		}
		t.Logf("%s reachable %s after its status was written", addr, first.Round(time.Millisecond))
		for range 100 {
			if _, err := c.Connect(addr, time.Second); err != nil {
				t.Fatalf("%s unreachable after it was first reached: %v", addr, err)
			}
		}
	})

	t.Run("the ARP owner is the node whose speaker pod says so", func(t *testing.T) {
		o := c.settledOwner(t, ip)
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(300 * time.Millisecond) {
			snap, err := inspect.Read(ctx, c.Kube, k8s.ConfigRef{}, "")
			if err != nil {
				t.Fatal(err)
			}
			rows, _ := snap.Status()
			i := slices.IndexFunc(rows, func(r inspect.StatusRow) bool { return r.Service == "default/nginx" })
			if i >= 0 && rows[i].Published && slices.Equal(rows[i].Announcers, []string{o.Name}) {
				// Every speaker pod runs the configuration in force.
				for _, s := range snap.Speakers {
					if s.Config != snap.InForce {
						t.Errorf("speaker %s on %s runs %q (%s), the controller %s", s.Pod, s.Node, s.Config, s.Err, snap.InForce)
					}
				}
				if len(snap.Speakers) != len(c.Nodes) {
					t.Errorf("kubectl herald status sees %d speakers, want %d", len(snap.Speakers), len(c.Nodes))
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("kubectl herald status says %+v; %s answers ARP", rows, o.Name)
			}
		}
	})

	t.Run("BGP: every node's path at the router, traffic through it", func(t *testing.T) {
		c.apply(t, service("nginx-bgp", "nginx", "", "herald.dev/address-pool: bgp"))
		bip := c.WaitAddresses("default", "nginx-bgp")[0]
		want := []string{c.Nodes[0].IP4, c.Nodes[1].IP4, c.Nodes[2].IP4}
		waitHops(t, c.Router, bip.String()+"/32", want, 30*time.Second)
		c.Client.Run("ip", "route", "replace", "198.51.100.0/24", "via", RouterIP4)
		if who, _ := c.reach(t, bip, "", 10*time.Second); !strings.Contains(who, " on node") {
			t.Errorf("through the router: %q", who)
		}
	})

	t.Run("Local follows the real pods: scale, cordon and drain", func(t *testing.T) {
		c.apply(t, `apiVersion: apps/v1
kind: Deployment
metadata: {name: local, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: local}}
  template:
    metadata: {labels: {app: local}}
    spec:
      containers:
      - name: demo
        image: herald-demo:dev
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
`)
		c.apply(t, service("local", "local", "  externalTrafficPolicy: Local\n", ""))
		c.rollout(t, "default", "deployment/local")
		addr := c.WaitAddresses("default", "local")[0]
		podNode := func() string {
			pods, _ := c.Kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=local"})
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && p.Spec.NodeName != "" {
					return p.Spec.NodeName
				}
			}
			return ""
		}
		follows := func(step string) {
			t.Helper()
			want := podNode()
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				if got := c.Owners(addr, 300*time.Millisecond); slices.Equal(got, []string{want}) {
					if who, err := c.Connect(addr, 2*time.Second); err == nil && strings.HasSuffix(who, "on "+want) {
						return
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %s answered by %v, want %s, where the only pod is", step, addr, c.Owners(addr, 300*time.Millisecond), want)
				}
			}
		}
		follows("one pod")
		from := podNode()
		if out, err := c.Kubectl("drain", from, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s"); err != nil {
			t.Fatalf("drain %s: %v\n%s", from, err, out)
		}
		c.rollout(t, "default", "deployment/local")
		if podNode() == from {
			t.Fatalf("the pod is still on the drained node %s", from)
		}
		follows("after draining " + from)
		if out, err := c.Kubectl("uncordon", from); err != nil {
			t.Fatalf("uncordon: %v\n%s", err, out)
		}
	})

	t.Run("speaker pod deleted, gracefully and by force", func(t *testing.T) {
		for _, how := range [][]string{nil, {"--grace-period=0", "--force"}} {
			old := c.settledOwner(t, ip)
			pod := c.speakerPod(t, old.Name)
			stop := make(chan struct{})
			l := c.connectLoop(ip, stop)
			start := time.Now()
			if out, err := c.Kubectl(append([]string{"-n", "herald-system", "delete", "pod", pod, "--wait=false"}, how...)...); err != nil {
				t.Fatalf("delete %s: %v\n%s", pod, err, out)
			}
			to, took := c.takeover(t, ip, old, start, 30*time.Second)
			time.Sleep(time.Second)
			close(stop)
			ok, fail, lastErr := l.result()
			t.Logf("speaker pod on %s deleted %v: %s announced %s after %s; client loop %d answered, %d failed (%v)",
				old.Name, how, to.Name, ip, took.Round(time.Millisecond), ok, fail, lastErr)
			// The client's neighbour entry moves once: only a connection open at that
			// instant can break (kube-proxy's NAT state for it is on the old node).
			if fail > 1 {
				t.Errorf("%d connections failed while the speaker pod went; at most the one in flight when the address moved may", fail)
			}
			c.rollout(t, "herald-system", "daemonset/herald-speaker")
		}
	})

	t.Run("rolling update of the speakers: no connection fails but one in flight at a move", func(t *testing.T) {
		stop := make(chan struct{})
		l := c.connectLoop(ip, stop)
		if out, err := c.Kubectl("-n", "herald-system", "rollout", "restart", "daemonset/herald-speaker"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c.rollout(t, "herald-system", "daemonset/herald-speaker")
		time.Sleep(2 * time.Second)
		close(stop)
		ok, fail, lastErr := l.result()
		t.Logf("rolling update of the speakers: %d connections answered, %d failed (%v)", ok, fail, lastErr)
		// Each node's restart moves its addresses away and back: at most the connection in
		// flight at each move may break.
		if limit := 2 * len(c.Nodes); fail > limit {
			t.Errorf("%d of %d connections failed during the rolling update; at most %d (one per move) may", fail, ok+fail, limit)
		}
		c.settledOwner(t, ip)
	})

	t.Run("the controller's leadership moves when its pod is deleted", func(t *testing.T) {
		lease, err := c.Kube.CoordinationV1().Leases("herald-system").Get(ctx, "herald-controller", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			t.Fatalf("no controller Lease: %v", err)
		}
		leader, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_")
		start := time.Now()
		if out, err := c.Kubectl("-n", "herald-system", "delete", "pod", leader, "--wait=false"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for deadline := start.Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			l, err := c.Kube.CoordinationV1().Leases("herald-system").Get(ctx, "herald-controller", metav1.GetOptions{})
			if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && !strings.HasPrefix(*l.Spec.HolderIdentity, leader+"_") {
				t.Logf("leadership moved from %s to %s after %s", leader, *l.Spec.HolderIdentity, time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the Lease did not move in a minute")
			}
		}
		c.apply(t, service("after-failover", "nginx", "", ""))
		if got := c.WaitAddresses("default", "after-failover"); len(got) != 1 {
			t.Errorf("the new leader gave %v", got)
		}
	})

	t.Run("a node's link cut: another node takes over", func(t *testing.T) {
		old := c.settledOwner(t, ip)
		start := time.Now()
		old.NS.Run("ip", "link", "set", "eth0", "down")
		to, took := c.takeover(t, ip, old, start, 30*time.Second)
		name, _ := c.reach(t, ip, "", 10*time.Second)
		t.Logf("%s's link cut: %s announced %s after %s; a pod answered (%s)", old.Name, to.Name, ip, took.Round(time.Millisecond), name)
		c.LinkUp(old)
		c.waitNodesReady(t)

		// The cut took the NAT state of old's API connections (kube-proxy masquerades a
		// host-network pod's traffic to the kubernetes Service): its speaker replaces
		// them (the link watch; the health check would only after 5 s of silence), and a
		// change reaches its plan as it reaches the others', not after client-go's 30 s
		// health check.
		views := func() []float64 {
			var out []float64
			for _, n := range c.Nodes {
				out = append(out, c.metric(n, "herald_speaker_service_addresses"))
			}
			return out
		}
		replaced := func() float64 { return c.metricWith(old, "herald_api_connections_replaced_total", `why="link_down"`) }
		for deadline := time.Now().Add(10 * time.Second); replaced() < 1; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s's speaker did not replace its API connections after its link was set down and up", old.Name)
			}
		}
		before := slices.Max(views())
		c.apply(t, service("after-cut", "nginx", "", ""))
		c.WaitAddresses("default", "after-cut") // the controller's part (its pod may be on old too)
		start = time.Now()
		for deadline := start.Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			v := views()
			if slices.Min(v) > before && slices.Min(v) == slices.Max(v) {
				t.Logf("a Service assigned after the link came back is in every speaker's plan %s after its status was written (%v addresses)", time.Since(start).Round(time.Millisecond), v[0])
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("10 s after a Service's address was written, the speakers (in node order) plan for %v addresses (before: %v): %s's view of the API server is stale since its link came back", v, before, old.Name)
			}
		}
	})

	// relay-local, through kube-proxy and real pods: the owner hands the other nodes with a
	// pod their share of new flows, and their pods see the client's address; ClientIP
	// affinity keeps a client on one pod. What the upstream spec "should be able to switch
	// session affinity for LoadBalancer service with Local traffic policy" asks.
	t.Run("Local with relay-local: every node with a pod answers, with the client's address", func(t *testing.T) {
		// Pods that keep serving for a while once deleted, as a graceful shutdown does,
		// one per node. The spread counts this revision's pods alone (pod-template-hash):
		// counted with the old revision's pod, still running while the new ones are
		// placed, two new pods may share a node once it is gone.
		if out, err := c.Kubectl("patch", "deployment", "local", "-p",
			`{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":30,"containers":[{"name":"demo","lifecycle":{"preStop":{"sleep":{"seconds":15}}}}],`+
				`"topologySpreadConstraints":[{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app":"local"}},"matchLabelKeys":["pod-template-hash"]}]}}}}`); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, err := c.Kubectl("scale", "deployment/local", fmt.Sprintf("--replicas=%d", len(c.Nodes))); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c.rollout(t, "default", "deployment/local")
		addr := c.WaitAddresses("default", "local")[0]
		owner := c.settledOwner(t, addr)
		// The nodes with a pod, by name, at their address of addr's family: the relay's
		// targets when every node may announce and is live.
		localPods := func() []corev1.Pod {
			list, err := c.Kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=local"})
			if err != nil {
				t.Fatal(err)
			}
			return list.Items
		}
		podNodes := func() map[string]netip.Addr {
			out := map[string]netip.Addr{}
			for _, p := range localPods() {
				if p.DeletionTimestamp == nil && p.Spec.NodeName != "" {
					out[p.Spec.NodeName] = netip.MustParseAddr(c.Node(p.Spec.NodeName).IP4)
				}
			}
			return out
		}
		// answers sends one request from a source port in each of the relay's buckets (a
		// client's own successive connections take neighbouring ports, so mostly one
		// bucket) and returns the pods and nodes that answered, and the requests answered
		// on another node than want(source port).
		round := 0
		answers := func(want func(sport uint16) string) (pods, nodes, wrong []string) {
			t.Helper()
			round++
			ps, ns := map[string]bool{}, map[string]bool{}
			for b := range relay.Buckets {
				from, to := relay.BucketPorts(b)
				// A port not used in earlier rounds, clear of the bucket's edges.
				sport := from + 100 + uint16((round*37)%int(to-from-200))
				a, err := c.ConnectFrom(addr, sport, 2*time.Second)
				if err != nil {
					// Retried like a wrong answer: a node whose kube-proxy has not yet
					// caught up with a new pod drops what it is handed.
					wrong = append(wrong, fmt.Sprintf("port %d: %v", sport, err))
					continue
				}
				if a.Seen != cluster.ClientIP4 {
					t.Errorf("%q saw the client as %q, want %s", a.Who, a.Seen, cluster.ClientIP4)
				}
				pod, node, _ := strings.Cut(a.Who, " on ")
				ps[pod], ns[node] = true, true
				if w := want(sport); node != w {
					wrong = append(wrong, fmt.Sprintf("port %d: %s, want %s", sport, node, w))
				}
			}
			return slices.Sorted(maps.Keys(ps)), slices.Sorted(maps.Keys(ns)), wrong
		}
		targets := podNodes()
		if len(targets) != len(c.Nodes) {
			t.Fatalf("the %d pods run on %v, want one on each of the %d nodes", len(c.Nodes), slices.Sorted(maps.Keys(targets)), len(c.Nodes))
		}
		// Where the plan sends each source port: the speaker and this test agree through
		// relay.Split, the kernel through the owner's rules.
		routes := relay.Split(addr, transport.TCP, cluster.ServicePort, owner.Name, targets)
		split := func(sport uint16) string { return relay.NodeOf(routes, sport, owner.Name) }

		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			pods, nodes, wrong := answers(split)
			if len(wrong) == 0 && len(nodes) == len(targets) {
				t.Logf("owner %s; %d requests, one per source-port bucket, each answered on its bucket's node; pods %v on %v",
					owner.Name, relay.Buckets, pods, nodes)
				// For the record, what the spread is per client, not per connection:
				// the kernel's own source ports for 40 requests in a row.
				var ports []uint16
				seen, bs := map[string]int{}, map[int]bool{}
				for range 40 {
					a, err := c.ConnectFrom(addr, 0, 2*time.Second)
					if err != nil {
						t.Errorf("%s: %v", addr, err)
						continue
					}
					_, node, _ := strings.Cut(a.Who, " on ")
					ports = append(ports, a.Port)
					seen[node]++
					bs[relay.Bucket(a.Port)] = true
					if w := split(a.Port); node != w {
						t.Errorf("kernel's port %d: answered on %s, want %s", a.Port, node, w)
					}
				}
				t.Logf("40 requests in a row from the kernel's source ports %d–%d (%d buckets): answered on %v",
					slices.Min(ports), slices.Max(ports), len(bs), seen)
				break
			}
			if time.Now().After(deadline) {
				// What the owner's kernel holds: the relay's rules and table.
				rules, _ := owner.NS.Command("ip", "rule", "list").CombinedOutput()
				nft, _ := owner.NS.Command("nft", "list", "table", "inet", "herald-relay").CombinedOutput()
				routes, _ := owner.NS.Command("ip", "route", "show", "table", "all").CombinedOutput()
				nft = append(nft, routes...)
				for _, n := range c.Nodes {
					nft = append(nft, fmt.Sprintf("\n%s %s", n.Name, n.IP4)...)
				}
				t.Fatalf("answered on %v, want every node with a pod %v (owner %s); %d of %d on another node than planned:\n%s\nowner's policy rules:\n%s\nowner's nftables:\n%s",
					nodes, slices.Sorted(maps.Keys(targets)), owner.Name, len(wrong), relay.Buckets, strings.Join(wrong, "\n"), rules, nft)
			}
		}
		patch := func(affinity string) {
			t.Helper()
			if out, err := c.Kubectl("patch", "service", "local", "-p", `{"spec":{"sessionAffinity":"`+affinity+`"}}`); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		// ClientIP affinity: the owner keeps every flow, and kube-proxy there the client on
		// one pod, whatever the source port.
		patch("ClientIP")
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			pods, _, wrong := answers(func(uint16) string { return owner.Name })
			if len(pods) == 1 && len(wrong) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ClientIP affinity: answered by %v, want one pod on the owner %s:\n%s", pods, owner.Name, strings.Join(wrong, "\n"))
			}
		}
		patch("None")
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			if _, nodes, wrong := answers(split); len(wrong) == 0 && len(nodes) == len(targets) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("affinity None again: the flows are not spread as planned")
			}
		}

		// A pod shutting down on a node the owner relays to keeps the connections it
		// holds while it still serves (kube-proxy there falls back to it): a kept-alive
		// connection relayed to it is answered by it again after it was deleted. The
		// node runs that one pod, and the Deployment is scaled down with that pod chosen
		// (pod-deletion-cost), so no pod comes or stays to keep the ranges for another
		// reason, and no new node takes a share.
		perNode := map[string]int{}
		for _, p := range localPods() {
			if p.DeletionTimestamp == nil {
				perNode[p.Spec.NodeName]++
			}
		}
		var sport uint16
		var drain string
		for b := range relay.Buckets {
			from, _ := relay.BucketPorts(b)
			if n := split(from + 450); n != owner.Name && perNode[n] == 1 {
				sport, drain = from+450, n
				break
			}
		}
		if drain == "" {
			t.Fatalf("no range relayed away from %s to a node with one pod (pods per node %v)", owner.Name, perNode)
		}
		tr := &http.Transport{DialContext: c.Client.DialFrom(sport), MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		get := func() (who string, reused bool, err error) {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr.String(), fmt.Sprint(cluster.ServicePort))+"/", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				return "", reused, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return strings.TrimSpace(string(b)), reused, err
		}
		who, _, err := get()
		pod, node, _ := strings.Cut(who, " on ")
		if err != nil || node != drain {
			t.Fatalf("from port %d: %q (%v), want a pod on %s", sport, who, err, drain)
		}
		if out, err := c.Kubectl("annotate", "pod", pod, "controller.kubernetes.io/pod-deletion-cost=-1000"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		time.Sleep(time.Second) // the ReplicaSet controller's cache sees the cost
		terminating := func() []string {
			var out []string
			for _, p := range localPods() {
				if p.DeletionTimestamp != nil {
					out = append(out, p.Name)
				}
			}
			return out
		}
		before := terminating() // of an earlier rollout
		if out, err := c.Kubectl("scale", "deployment/local", "--replicas=2"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			gone := slices.DeleteFunc(terminating(), func(n string) bool { return slices.Contains(before, n) })
			if slices.Contains(gone, pod) {
				break
			}
			if len(gone) > 0 || time.Now().After(deadline) {
				t.Fatalf("scaling down removed %v, not %s (the pod with the lowest deletion cost)", gone, pod)
			}
		}
		// Until the EndpointSlice says the pod is terminating, and the speakers had a
		// moment to act on it.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			list, err := c.Kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=local"})
			if err != nil {
				t.Fatal(err)
			}
			terminating := false
			for _, es := range list.Items {
				for _, e := range es.Endpoints {
					if e.TargetRef != nil && e.TargetRef.Name == pod && e.Conditions.Terminating != nil && *e.Conditions.Terminating {
						terminating = true
					}
				}
			}
			if terminating {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod %s not terminating in its EndpointSlice after 10 s", pod)
			}
		}
		time.Sleep(2 * time.Second)
		again, reused, err := get()
		if err != nil || again != who || !reused {
			t.Errorf("the kept-alive connection from port %d after %s was deleted: %q (reused %v, %v), want %q on the same connection", sport, pod, again, reused, err, who)
		} else {
			t.Logf("%s, deleted and still serving, answered the connection it held (port %d) again", pod, sport)
		}
		if out, err := c.Kubectl("scale", "deployment/local", "--replicas=3"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c.rollout(t, "default", "deployment/local")
	})

	// What a non-owner's death costs, where Herald does not forward (forwarding: none):
	// kube-proxy keeps the dead node's pods among a Cluster Service's endpoints until the
	// node controller marks the node NotReady, while a Local Service's owner sends only to
	// its own pods. Herald's part is asserted (the address answers, the owner stays); the
	// failed share is a figure.
	t.Run("a non-owner's link cut: the owner stays; what each traffic policy loses", func(t *testing.T) {
		if out, err := c.Kubectl("scale", "deployment/local", "--replicas=3"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c.rollout(t, "default", "deployment/local")
		for _, tc := range []struct{ policy, svc string }{{"Cluster", "nginx"}, {"Local", "local"}} {
			addr := c.WaitAddresses("default", tc.svc)[0]
			owner := c.settledOwner(t, addr)
			// Cut a node that runs one of the Service's pods (the app label is its name):
			// that is the node kube-proxy keeps sending to.
			pods, err := c.Kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + tc.svc})
			if err != nil {
				t.Fatal(err)
			}
			onNode := map[string]int{}
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil {
					onNode[p.Spec.NodeName]++
				}
			}
			cut := c.Nodes[(slices.Index(c.Nodes, owner)+1)%len(c.Nodes)]
			for _, n := range c.Nodes {
				if n != owner && onNode[n.Name] > 0 {
					cut = n
					break
				}
			}
			stop := make(chan struct{})
			l := c.requestLoop(addr, 20*time.Millisecond, 500*time.Millisecond, stop)
			time.Sleep(time.Second)
			cut.NS.Run("ip", "link", "set", "eth0", "down")
			start := time.Now()
			time.Sleep(10 * time.Second)
			got := c.Owners(addr, 300*time.Millisecond)
			close(stop)
			ok, fail, lastErr := l.result()
			c.LinkUp(cut)
			last := "none failed"
			if fail > 0 {
				last = fmt.Sprintf("the last %s after the cut (%v)", l.lastFailure().Sub(start).Round(time.Millisecond), lastErr)
			}
			t.Logf("externalTrafficPolicy %s: %s's link cut for 10 s (owner %s; pods per node %v): %d of %d requests failed (%.1f%%); %s",
				tc.policy, cut.Name, owner.Name, onNode, fail, ok+fail, 100*float64(fail)/float64(max(ok+fail, 1)), last)
			if !slices.Equal(got, []string{owner.Name}) {
				t.Errorf("%s answered by %v while %s's link was cut, want the owner %s alone", addr, got, cut.Name, owner.Name)
			}
			if ok == 0 {
				t.Errorf("%s did not answer once while %s's link was cut", addr, cut.Name)
			}
			c.waitNodesReady(t)
		}
	})

	t.Run("Events and no forbidden in any Herald log", func(t *testing.T) {
		evs, err := c.Kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=nginx"})
		if err != nil {
			t.Fatal(err)
		}
		reasons := map[string]bool{}
		for _, e := range evs.Items {
			reasons[e.Reason] = true
		}
		for _, want := range []string{k8s.ReasonIPAllocated, k8s.ReasonAnnouncing} {
			if !reasons[want] {
				t.Errorf("no %s Event on default/nginx (have %v)", want, reasons)
			}
		}
		logs, _ := filepath.Glob(filepath.Join(c.LogDir(), "nodes", "*", "pod-logs", "herald-system_*", "*", "*.log"))
		if len(logs) == 0 {
			t.Fatal("no Herald pod logs found")
		}
		for _, f := range logs {
			b, _ := os.ReadFile(f)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(strings.ToLower(line), "forbidden") {
					t.Errorf("%s: %s", filepath.Base(filepath.Dir(filepath.Dir(f))), line)
				}
			}
		}
	})
}

// waitNodesReady waits until every node is Ready again.
func (c *Cluster) waitNodesReady(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		nodes, err := c.Kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		ready := 0
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if err == nil && cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready == len(c.Nodes) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d nodes Ready", ready, len(c.Nodes))
		}
	}
}

// BenchmarkRealClusterFailover measures, on the real cluster, the time from deleting the
// owner's speaker pod (gracefully, then with --grace-period=0 --force) to the first
// gratuitous ARP from the new owner, and counts the connections a client opening one
// every 10 ms sees fail, HERALD_FAILOVER_RUNS times each (default 5); then the failures
// during a rolling update of the speaker DaemonSet. Run (root):
//
//	go test ./e2e -run '^$' -bench RealClusterFailover -benchtime 1x
func BenchmarkRealClusterFailover(b *testing.B) {
	runs := 5
	if v, err := strconv.Atoi(envOr("HERALD_FAILOVER_RUNS", "5")); err == nil && v > 0 {
		runs = v
	}
	c := kube(b)
	ip := c.WaitAddresses("default", "nginx")[0]
	for b.Loop() {
		for _, how := range []struct {
			name  string
			flags []string
		}{{"delete", nil}, {"force", []string{"--grace-period=0", "--force"}}} {
			var took []time.Duration
			failed := 0
			for range runs {
				old := c.settledOwner(b, ip)
				pod := c.speakerPod(b, old.Name)
				stop := make(chan struct{})
				l := c.connectLoop(ip, stop)
				start := time.Now()
				if out, err := c.Kubectl(append([]string{"-n", "herald-system", "delete", "pod", pod, "--wait=false"}, how.flags...)...); err != nil {
					b.Fatalf("delete %s: %v\n%s", pod, err, out)
				}
				_, d := c.takeover(b, ip, old, start, 30*time.Second)
				time.Sleep(500 * time.Millisecond)
				close(stop)
				_, fail, _ := l.result()
				took, failed = append(took, d), failed+fail
				c.rollout(b, "herald-system", "daemonset/herald-speaker")
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[0].Milliseconds()), "ms-"+how.name+"-min")
			b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-"+how.name+"-median")
			b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-"+how.name+"-max")
			b.ReportMetric(float64(failed), "failed-conns-"+how.name)
		}
		c.settledOwner(b, ip)
		stop := make(chan struct{})
		l := c.connectLoop(ip, stop)
		if out, err := c.Kubectl("-n", "herald-system", "rollout", "restart", "daemonset/herald-speaker"); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}
		c.rollout(b, "herald-system", "daemonset/herald-speaker")
		time.Sleep(time.Second)
		close(stop)
		ok, fail, _ := l.result()
		b.ReportMetric(float64(ok+fail), "conns-rolling-update")
		b.ReportMetric(float64(fail), "failed-conns-rolling-update")
	}
}
