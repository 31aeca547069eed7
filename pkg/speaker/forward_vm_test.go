package speaker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/hack/netlab"
	fipvs "github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/liveness"
)

// TestSpeakerForwardsInVM runs the speaker with the real forwarder on Debian's kernel, with
// the real API server in the VM too (go run ./hack/vm -control-plane -run InVM
// ./pkg/speaker): this (root) namespace is node n1, which announces the address; h12 and
// h13 are nodes n2 and n3 with a stand-in for kube-proxy on the Service's NodePort; h11
// is the client, routed to the address through n1. Nothing listens on n1's own NodePort,
// as with kube-proxy (its NodePort DNAT is in prerouting, which IPVS's local delivery
// never passes): n1 takes its share through its own pod. Real TCP connections show where the
// traffic goes as nodes come and go and the speaker restarts.
func TestSpeakerForwardsInVM(t *testing.T) {
	netlab.RequireVM(t)
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	ns := inForce(t, c, "address-pools:\n- {name: lan, protocol: layer2, addresses: [192.168.10.90-192.168.10.99]}\n")
	client := netlab.LinkedHost(t, 11)
	n2, n3 := netlab.LinkedHost(t, 12), netlab.LinkedHost(t, 13)
	createNode(t, c, "n1", "10.11.0.1", true)
	createNode(t, c, "n2", "10.12.0.2", true)
	createNode(t, c, "n3", "10.13.0.2", true)
	svc := createService(t, c, ns, "web", "192.168.10.90", nil)
	np := svc.Spec.Ports[0].NodePort
	netlab.ServeName(t, n2, fmt.Sprintf("10.12.0.2:%d", np), "n2")
	netlab.ServeName(t, n3, fmt.Sprintf("10.13.0.2:%d", np), "n3")
	root, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	netlab.ServeName(t, root, "10.11.0.1:8080", "n1") // n1's own pod (a local address, the Service's target port)
	createEndpoints(t, c, ns, "web", map[string]string{"10.11.0.1": "n1"})
	if err := netlab.InNamespace(client, func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(192, 168, 10, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.IPv4(10, 11, 0, 1)})
	}); err != nil {
		t.Fatal(err)
	}

	h, err := ipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	members := &fakeMembers{meta: map[string][]byte{}, changed: make(chan struct{}, 1)}
	members.set("n1", true) // only n1 can forward, so it owns the address
	members.set("n2", false)
	members.set("n3", false)
	start := func() (stop func()) {
		var spk *Speaker
		kernel, err := fipvs.OpenLinux()
		if err != nil {
			t.Fatal(err)
		}
		fwd, err := fipvs.New(kernel, fipvs.Options{Owns: func(a netip.Addr) bool { return spk.Owns(a) }})
		if err != nil {
			t.Fatal(err)
		}
		spk, err = New(Options{Client: coreClient(t), NodeName: "n1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: &layer2Rec{},
			Members: members, Forward: fwd, ResyncPeriod: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(kernel.Close)
		return run(t, spk)
	}
	// answers asks the address 30 times (bounded: 2 s each at most) and returns who answered.
	answers := func() []string {
		seen := map[string]bool{}
		for range 30 {
			if who, _, err := netlab.Ask(client, "192.168.10.90:80", 2*time.Second); err == nil {
				seen[who] = true
			}
		}
		var out []string
		for w := range seen {
			out = append(out, w)
		}
		slices.Sort(out)
		return out
	}
	waitAnswers := func(want ...string) {
		t.Helper()
		var got []string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got = answers(); slices.Equal(got, want) {
				return
			}
		}
		t.Fatalf("answered by %v, want %v", got, want)
	}
	kernelState := func() string {
		svcs, _ := h.GetServices()
		var out []string
		for _, s := range svcs {
			if !s.Address.Equal(net.IPv4(192, 168, 10, 90)) {
				continue // not Herald's
			}
			dests, _ := h.GetDestinations(s)
			var ds []string
			for _, d := range dests {
				ds = append(ds, fmt.Sprintf("%s:%d", d.Address, d.Port))
			}
			slices.Sort(ds)
			out = append(out, fmt.Sprintf("%s:%d -> %s", s.Address, s.Port, strings.Join(ds, ",")))
		}
		slices.Sort(out)
		return strings.Join(out, "; ")
	}

	stop := start()
	waitAnswers("n1", "n2", "n3")

	// n3 goes NotReady: its real server goes, and no connection reaches it.
	node, err := c.CoreV1().Nodes().Get(ctx, "n3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setNode(t, c, node, "10.13.0.2", false)
	waitAnswers("n1", "n2")
	want := fmt.Sprintf("192.168.10.90:80 -> 10.11.0.1:8080,10.12.0.2:%d", np)
	if got := kernelState(); got != want {
		t.Errorf("IPVS holds %q, want %q", got, want)
	}

	// A stopped speaker leaves nothing; a restarted one puts back exactly the same.
	stop()
	if got := kernelState(); got != "" {
		t.Errorf("after the speaker stopped, IPVS holds %q", got)
	}
	start()
	waitAnswers("n1", "n2")
	if got := kernelState(); got != want {
		t.Errorf("after a restart IPVS holds %q, want %q", got, want)
	}
}

// TestSpeakerForwardsToEndpointsInVM runs the speaker of a pool with forwarding:
// endpoints and the real forwarder: the client's connections reach the pods themselves
// (addresses behind nodes p2 and p3, reached through this node's routes); when the
// failure detector finds p3's speaker silent its pod gets nothing more, though its Node
// is Ready; with no ready endpoint on a live node, connections are refused at once.
func TestSpeakerForwardsToEndpointsInVM(t *testing.T) {
	netlab.RequireVM(t)
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ns := inForce(t, c, "forwarding: endpoints\naddress-pools:\n- {name: lan, protocol: layer2, addresses: [192.168.10.90-192.168.10.99]}\n")
	client := netlab.LinkedHost(t, 14)
	if err := netlab.InNamespace(client, func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(192, 168, 10, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.IPv4(10, 14, 0, 1)})
	}); err != nil {
		t.Fatal(err)
	}
	createNode(t, c, "p1", "10.14.0.1", true)
	eps := map[string]string{}
	for _, n := range []int{15, 16} {
		h := netlab.LinkedHost(t, n)
		pod := fmt.Sprintf("10.244.%d.5", n)
		if err := netlab.InNamespace(h, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(pod), Mask: net.CIDRMask(32, 32)}})
		}); err != nil {
			t.Fatal(err)
		}
		route := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 244, byte(n), 0), Mask: net.CIDRMask(24, 32)}, Gw: net.IPv4(10, byte(n), 0, 2)}
		if err := netlink.RouteAdd(route); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netlink.RouteDel(route) })
		node := fmt.Sprintf("p%d", n-13)
		createNode(t, c, node, fmt.Sprintf("10.%d.0.2", n), true)
		netlab.ServeName(t, h, pod+":8080", node)
		eps[pod] = node
	}
	createService(t, c, ns, "web", "192.168.10.90", nil)
	createEndpoints(t, c, ns, "web", eps)

	members := &fakeMembers{meta: map[string][]byte{}, changed: make(chan struct{}, 1)}
	members.set("p1", true) // only p1 can forward, so it owns the address
	members.set("p2", false)
	members.set("p3", false)
	live := &fakeLiveness{changed: make(chan struct{}, 1)}
	kernel, err := fipvs.OpenLinux()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kernel.Close)
	var spk *Speaker
	fwd, err := fipvs.New(kernel, fipvs.Options{Owns: func(a netip.Addr) bool { return spk.Owns(a) }})
	if err != nil {
		t.Fatal(err)
	}
	spk, err = New(Options{Client: coreClient(t), NodeName: "p1", Config: k8s.ConfigRef{Namespace: ns}, Layer2: &layer2Rec{},
		Members: members, Liveness: live, Forward: fwd, ResyncPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	run(t, spk)

	answers := func() ([]string, error) {
		seen := map[string]bool{}
		var last error
		for range 10 {
			who, _, err := netlab.Ask(client, "192.168.10.90:80", 2*time.Second)
			if err != nil {
				last = err
				continue
			}
			seen[who] = true
		}
		return slices.Sorted(maps.Keys(seen)), last
	}
	waitAnswers := func(want ...string) {
		t.Helper()
		var got []string
		var err error
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got, err = answers(); slices.Equal(got, want) && err == nil {
				return
			}
		}
		t.Fatalf("answered by %v (last error %v), want %v", got, err, want)
	}
	waitAnswers("p2", "p3")

	// p3's speaker goes silent: its pod gets nothing more.
	live.set(map[string]liveness.Reason{"p3": liveness.Silent})
	waitAnswers("p2")
	// p2's speaker goes silent too: no ready endpoint on a live node; refused at once.
	live.set(map[string]liveness.Reason{"p2": liveness.Silent, "p3": liveness.Silent})
	var err2 error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		start := time.Now()
		_, _, err2 = netlab.Ask(client, "192.168.10.90:80", 2*time.Second)
		if errors.Is(err2, syscall.ECONNREFUSED) && time.Since(start) < time.Second {
			break
		}
	}
	if !errors.Is(err2, syscall.ECONNREFUSED) {
		t.Fatalf("with every endpoint's node silent: %v, want connection refused", err2)
	}
	// Heard again: back.
	live.set(nil)
	waitAnswers("p2", "p3")
}
