package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/inspect"
	"github.com/heraldlb/herald/pkg/k8s"
)

// owner waits until exactly one node answers for ip and returns it.
func (c *Cluster) owner(t testing.TB, ip netip.Addr, limit time.Duration) *Node {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		got = c.Owners(ip, 300*time.Millisecond)
		if len(got) == 1 {
			return c.Node(got[0])
		}
		if len(got) > 1 {
			t.Fatalf("%s answered by %v: more than one node", ip, got)
		}
	}
	t.Fatalf("no node answers for %s after %s (logs in %s)", ip, limit, c.LogDir())
	return nil
}

// reach waits until a TCP connection to ip is answered by a node other than not, and
// returns that node's name and how long it took.
func (c *Cluster) reach(t testing.TB, ip netip.Addr, not string, limit time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < limit {
		name, err := c.Connect(ip, 250*time.Millisecond)
		if err == nil && name != not {
			return name, time.Since(start)
		}
		last = err
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s not reached through a node other than %q after %s: %v (logs in %s)", ip, not, limit, last, c.LogDir())
	return "", 0
}

func TestLayer2OneAnswerAndTraffic(t *testing.T) {
	c := start(t, Options{})
	ips := c.CreateService("web", func(s *corev1.Service) {
		p := corev1.IPFamilyPolicyRequireDualStack
		s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &p, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	})
	if len(ips) != 2 || ips[0] != netip.MustParseAddr("192.168.10.90") || ips[1] != netip.MustParseAddr("fd10::90") {
		t.Fatalf("addresses %v", ips)
	}
	for _, ip := range ips {
		o := c.owner(t, ip, 10*time.Second)
		// Asked again and again, always the same single node answers, with its own MAC.
		for range 3 {
			if got := c.Owners(ip, 300*time.Millisecond); !slices.Equal(got, []string{o.Name}) {
				t.Fatalf("%s answered by %v, want only %s", ip, got, o.Name)
			}
		}
		name, err := c.Connect(ip, 2*time.Second)
		if err != nil || name != o.Name {
			t.Errorf("TCP to %s reached %q (%v), want the owner %s", ip, name, err, o.Name)
		}
	}
	// The client's kernel resolved the address to the owner's MAC.
	neigh := c.Client.Run("ip", "neigh", "show", "192.168.10.90")
	if o := c.owner(t, ips[0], time.Second); !strings.Contains(neigh, o.MAC) {
		t.Errorf("client neighbour entry %q, want %s's MAC %s", neigh, o.Name, o.MAC)
	}
}

func TestLayer2LocalFollowsEndpoints(t *testing.T) {
	c := start(t, Options{})
	ctx := context.Background()
	ready := true
	slice := func(node string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "local-1", Labels: map[string]string{discoveryv1.LabelServiceName: "local"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.5"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}
	}
	if _, err := c.Kube.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("node2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ips := c.CreateService("local", func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	if o := c.owner(t, ips[0], 10*time.Second); o.Name != "node2" {
		t.Fatalf("Local Service announced by %s, want node2 (its only endpoint)", o.Name)
	}
	// The endpoint moves to node3; so does the address.
	if _, err := c.Kube.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("node3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := c.Owners(ips[0], 300*time.Millisecond); slices.Equal(got, []string{"node3"}) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after the endpoint moved, %s answered by %v, want node3", ips[0], got)
		}
	}
	if name, _ := c.reach(t, ips[0], "", 5*time.Second); name != "node3" {
		t.Errorf("traffic reached %s, want node3", name)
	}
}

// failover takes the owner of ip out with kill, measures the time from then until a
// client's connection to ip is answered by another node, and brings the old owner back.
func (c *Cluster) failover(t testing.TB, ip netip.Addr, how string) (from, to string, took time.Duration) {
	t.Helper()
	old := c.owner(t, ip, 10*time.Second)
	if name, err := c.Connect(ip, 2*time.Second); err != nil || name != old.Name {
		t.Fatalf("before: %s reached %q (%v), want %s", ip, name, err, old.Name)
	}
	start := time.Now()
	switch how {
	case "graceful":
		c.Signal(old, syscall.SIGTERM)
	case "crash":
		c.Signal(old, syscall.SIGKILL)
	case "link down":
		old.NS.Run("ip", "link", "set", "eth0", "down")
	}
	to, _ = c.reach(t, ip, old.Name, 10*time.Second)
	took = time.Since(start)
	if how == "graceful" {
		// Make before break: the old owner answers until the new one has announced, so
		// for a moment both may. Once it has exited, only the new one may.
		c.StopSpeaker(old, syscall.SIGTERM)
	}
	if now := c.owner(t, ip, 5*time.Second); now.Name != to {
		t.Errorf("traffic went to %s but %s answers for %s", to, now.Name, ip)
	}
	if how == "link down" {
		old.NS.Run("ip", "link", "set", "eth0", "up")
	} else {
		c.StopSpeaker(old, syscall.SIGKILL) // reaps it; a no-op signal if it has exited
		c.StartSpeaker(old)
	}
	c.WaitMembers(len(c.Nodes), 20*time.Second)
	return old.Name, to, took
}

func TestLayer2Failover(t *testing.T) {
	c := start(t, Options{})
	ips := c.CreateService("web", func(s *corev1.Service) {
		p := corev1.IPFamilyPolicyRequireDualStack
		s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &p, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	})
	for _, how := range []string{"graceful", "crash", "link down"} {
		for _, ip := range ips {
			from, to, took := c.failover(t, ip, how)
			t.Logf("%-9s %-12s %s -> %s: traffic through the new owner after %s", how, ip, from, to, took.Round(time.Millisecond))
			if how == "graceful" && ip.Is4() {
				// The old owner is back and has taken the address again: what the admin
				// sees must match who answers ARP.
				c.checkObservedOwner(t, "default/web", ip, c.owner(t, ip, 5*time.Second).Name)
			}
		}
	}
}

// checkObservedOwner checks what an admin sees after ownership moved: kubectl herald
// status names the owner from the speakers' own Events, and the owner's metrics count
// its takeover.
func (c *Cluster) checkObservedOwner(t *testing.T, svc string, ip netip.Addr, owner string) {
	t.Helper()
	var rows []inspect.StatusRow
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		snap, err := inspect.Read(context.Background(), c.Kube, k8s.ConfigRef{}, "")
		if err != nil {
			t.Fatal(err)
		}
		if rows, err = snap.Status(); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(rows, func(r inspect.StatusRow) bool { return r.Service == svc && r.IP == ip.String() })
		if i >= 0 && rows[i].Published && slices.Equal(rows[i].Announcers, []string{owner}) {
			m, err := c.Metrics(c.Node(owner))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{`herald_layer2_gratuitous_sent_total{family="IPv4"}`, "herald_speaker_ownership_changes_total", "herald_layer2_announced_addresses"} {
				if !strings.Contains(m, want) || strings.Contains(m, want+" 0\n") {
					t.Errorf("%s's metrics after taking %s over: %s missing or zero", owner, ip, want)
				}
			}
			return
		}
	}
	t.Errorf("kubectl herald status after the failover: %+v; want %s announced by %s, as its speaker said", rows, ip, owner)
}

// freezeAPIServer stops the API server's process (SIGSTOP) until the returned function,
// or the end of the test, resumes it.
func (c *Cluster) freezeAPIServer(t *testing.T) (resume func()) {
	t.Helper()
	apiserver := c.CP.Pid("kube-apiserver")
	if err := syscall.Kill(apiserver, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { _ = syscall.Kill(apiserver, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	return resume
}

func TestLayer2KeepsAnnouncingWithoutAPIServer(t *testing.T) {
	c := start(t, Options{})
	ips := c.CreateService("web", nil)
	o := c.owner(t, ips[0], 10*time.Second)
	resume := c.freezeAPIServer(t)
	// Thirty seconds without an API server: traffic keeps flowing to the same node.
	for i := range 30 {
		name, err := c.Connect(ips[0], time.Second)
		if err != nil || name != o.Name {
			t.Fatalf("second %d without the API server: reached %q (%v), want %s", i, name, err, o.Name)
		}
		time.Sleep(time.Second)
	}
	if got := c.Owners(ips[0], 300*time.Millisecond); !slices.Equal(got, []string{o.Name}) {
		t.Fatalf("without the API server, %s answered by %v", ips[0], got)
	}
	resume()
	// Back: a new Service is announced again.
	ips2 := c.CreateService(fmt.Sprint("web2"), nil)
	c.owner(t, ips2[0], 20*time.Second)
}

// Without memberlist, a node's Ready condition stands in for its speaker: the owner
// marked NotReady loses the address to another node.
func TestLayer2WithoutMemberlist(t *testing.T) {
	c := start(t, Options{SpeakerFlags: []string{"--memberlist=false"}, SkipMemberWait: true})
	ips := c.CreateService("web", nil)
	old := c.owner(t, ips[0], 10*time.Second)
	ctx := context.Background()
	node, err := c.Kube.CoreV1().Nodes().Get(ctx, old.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions[0].Status = corev1.ConditionFalse
	if _, err := c.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	name, took := c.reach(t, ips[0], old.Name, 10*time.Second)
	t.Logf("%s NotReady: traffic through %s after %s", old.Name, name, took.Round(time.Millisecond))
	if now := c.owner(t, ips[0], 5*time.Second); now.Name != name || now.Name == old.Name {
		t.Errorf("after %s went NotReady, %s answers ARP and traffic reaches %s", old.Name, now.Name, name)
	}
}

// A speaker that crashes while the API server is frozen: the others act on what they
// already know (their caches and their own connections), so the address moves all the
// same and the client reaches a new owner within a second.
func TestLayer2FailoverWithoutAPIServer(t *testing.T) {
	c := start(t, Options{})
	ips := c.CreateService("web", nil)
	o := c.owner(t, ips[0], 10*time.Second)
	resume := c.freezeAPIServer(t)
	time.Sleep(5 * time.Second) // frozen for a while first: nobody moves
	if got := c.Owners(ips[0], 300*time.Millisecond); !slices.Equal(got, []string{o.Name}) {
		t.Fatalf("with the API server frozen, %s answered by %v, want %s", ips[0], got, o.Name)
	}
	start := time.Now()
	c.StopSpeaker(o, syscall.SIGKILL)
	for {
		name, err := c.Connect(ips[0], 200*time.Millisecond)
		if err == nil && name != o.Name {
			t.Logf("new owner %s reached %s after the kill, the API server frozen", name, time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("5 s after %s's speaker died with the API server frozen: reached %q (%v)", o.Name, name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := c.Owners(ips[0], 300*time.Millisecond); len(got) != 1 || got[0] == o.Name {
		t.Fatalf("after the failover, %s answered by %v", ips[0], got)
	}
	resume()
}

// A node that briefly believed it owned an address (its gratuitous ARP and unsolicited
// advertisement heard by every neighbour, the client's kernel moved to it) does not keep
// the client: the owner, whose view of the cluster never changed, hears the claim and
// announces the address again, and the client's neighbour entry is back on the owner.
func TestLayer2OwnerAnswersAnotherNodesClaim(t *testing.T) {
	c := start(t, Options{})
	ips := c.CreateService("web", func(s *corev1.Service) {
		p := corev1.IPFamilyPolicyRequireDualStack
		s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &p, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	})
	for _, ip := range ips {
		o := c.owner(t, ip, 10*time.Second)
		if name, err := c.Connect(ip, 2*time.Second); err != nil || name != o.Name {
			t.Fatalf("TCP to %s reached %q (%v), want the owner %s", ip, name, err, o.Name)
		}
		var other *Node
		for _, n := range c.Nodes {
			if n != o {
				other = n
				break
			}
		}
		usurper := netlab.NewProber(t, other.NS, "eth0", netip.MustParseAddr(other.IP4))
		claim := usurper.ClaimARP
		if ip.Is6() {
			claim = usurper.ClaimNDP
		}
		if err := claim(ip); err != nil {
			t.Fatal(err)
		}
		var neigh string
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if neigh = c.Client.Run("ip", "neigh", "show", ip.String(), "dev", "eth0"); strings.Contains(neigh, o.MAC) {
				break
			}
		}
		if !strings.Contains(neigh, o.MAC) {
			t.Fatalf("after %s claimed %s, the client's neighbour entry is %q, want the owner %s's MAC %s", other.Name, ip, neigh, o.Name, o.MAC)
		}
		if name, err := c.Connect(ip, 2*time.Second); err != nil || name != o.Name {
			t.Errorf("after %s claimed %s, TCP reached %q (%v), want the owner %s", other.Name, ip, name, err, o.Name)
		}
		family := "IPv4"
		if ip.Is6() {
			family = "IPv6"
		}
		if got := c.metricWith(o, "herald_layer2_conflicts_total", `family="`+family+`"`); got < 1 {
			t.Errorf("%s's herald_layer2_conflicts_total{family=%q} = %v, want at least 1", o.Name, family, got)
		}
	}
}
