package linkcut

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// The lab's addresses: everything on the bridge hlab0 of the VM's root namespace, which
// also holds the API server; node i is 10.30.0.1i with pods in 10.244.i.0/24.
const (
	apiAddr    = "10.30.0.1"
	clientAddr = "10.30.0.100"
	pool       = "10.30.0.200-10.30.0.209"
	podPort    = 8080
	nodes      = 3

	cutFor      = 5 * time.Second        // how long a link stays down
	every       = 20 * time.Millisecond  // the client's pace
	reqLimit    = time.Second            // one request's limit (tcg is slow: shorter fails healthy requests)
	settle      = 2 * time.Second        // consecutive successes that end a phase
	lateAfter   = 500 * time.Millisecond // with endpoints, no request started this long after a cut may fail
	maxAsks     = 20000                  // bound on the client's requests in one mode
	stepLimit   = 60 * time.Second       // bound on every wait
	holderEvery = 100 * time.Millisecond // how often the client's neighbour entry is sampled
	steadyLimit = 20 * time.Second       // bound on the wait for steady answers after a cut
	markMasq    = uint32(0x4000)         // kube-proxy's masquerade mark
)

func nodeName(i int) string { return fmt.Sprintf("n%d", i) }
func nodeIP(i int) string   { return fmt.Sprintf("10.30.0.1%d", i) }
func podIP(i int) string    { return fmt.Sprintf("10.244.%d.5", i) }

// TestLinkCutInVM cuts the announcing node's link, then another node's, under each
// forwarding mode, while a client asks the Service's address every 20 ms, and reports the
// failed requests and the time from the cut to the last failure. kube-proxy is not run:
// each node holds the nftables rules it would write (NodePort, and the address itself
// when Herald does not forward, DNAT to a random endpoint among all ready ones, with
// masquerade), so that traffic meets the same second hop as in a cluster, and a node
// whose link is cut stays Ready with its pod an endpoint, as it does until the node
// controller acts.
func TestLinkCutInVM(t *testing.T) {
	netlab.RequireVM(t)
	speakerBin := filepath.Join(os.Getenv("HERALD_VM_BIN"), "speaker")
	if _, err := os.Stat(speakerBin); err != nil {
		t.Skipf("no speaker binary (%v): run with go run ./hack/vm -control-plane -bin ./speaker", err)
	}
	lab := newLab(t)
	var table []string
	for i, mode := range []string{"none", "ipvs", "endpoints"} {
		rows := lab.run(t, mode, fmt.Sprintf("10.30.0.%d", 200+i), speakerBin)
		table = append(table, rows...)
	}
	t.Logf("link cuts, client every %s, request limit %s, link down %s:\n%-10s %-9s %-14s %-22s %s\n%s", every, reqLimit, cutFor,
		"MODE", "CUT", "FAILED(DOWN)", "LAST FAILURE AFTER CUT", "FAILED(AFTER UP)", strings.Join(table, "\n"))
}

// lab is the network and the cluster objects every mode shares.
type lab struct {
	node   [nodes + 1]netns.NsHandle // 1-based
	client netns.NsHandle
	api    kubernetes.Interface
	cp     *k8stest.ControlPlane
	mac    map[string]string // eth0's MAC → node name
	dir    string
}

func newLab(t *testing.T) *lab {
	l := &lab{mac: map[string]string{}, dir: t.TempDir()}
	// The bridge, with the API server's address.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "hlab0"}}
	must(t, netlink.LinkAdd(br))
	t.Cleanup(func() { _ = netlink.LinkDel(br) })
	must(t, netlink.AddrAdd(br, addr(apiAddr+"/24")))
	must(t, netlink.LinkSetUp(br))

	for i := 1; i <= nodes; i++ {
		n := newNS(t, fmt.Sprintf("lab-%s", nodeName(i)))
		l.node[i] = n
		plugBridge(t, br, fmt.Sprintf("hl-n%d", i), n, nodeIP(i)+"/24")
		// The pod: its own namespace behind a veth, the node routing its /24.
		pod := newNS(t, fmt.Sprintf("lab-p%d", i))
		veth(t, fmt.Sprintf("hl-p%d", i), n, "pod0", fmt.Sprintf("10.244.%d.1/24", i), pod, "eth0", podIP(i)+"/24")
		must(t, in(pod, func() error { return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(fmt.Sprintf("10.244.%d.1", i))}) }))
		serveHTTP(t, pod, net.JoinHostPort(podIP(i), fmt.Sprint(podPort)), fmt.Sprintf("pod-%d %s", i, nodeName(i)))
		must(t, in(n, func() error {
			if err := podRoutes(i); err != nil {
				return err
			}
			// What the speaker's init container sets (--prepare-forwarding): ip_forward
			// and IPVS conntrack, per namespace.
			for _, p := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/vs/conntrack"} {
				if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
					return err
				}
			}
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			l.mac[eth.Attrs().HardwareAddr.String()] = nodeName(i)
			return nil
		}))
	}
	l.client = newNS(t, "lab-client")
	plugBridge(t, br, "hl-c", l.client, clientAddr+"/24")

	cp, err := k8stest.Start(context.Background(), k8stest.Options{Dir: filepath.Join(l.dir, "cp"), BindAddress: apiAddr})
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	l.cp = cp
	l.api = kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	for i := 1; i <= nodes; i++ {
		n, err := l.api.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i)}}, metav1.CreateOptions{})
		must(t, err)
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(i)}}
		_, err = l.api.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		must(t, err)
	}
	return l
}

// podRoutes routes, in node i's namespace, the other nodes' pod /24s through them, as the
// pod network's daemon does (again when the link comes back: the kernel drops routes
// through a link that goes down).
func podRoutes(i int) error {
	for j := 1; j <= nodes; j++ {
		if j == i {
			continue
		}
		_, dst, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", j))
		if err := netlink.RouteReplace(&netlink.Route{Dst: dst, Gw: net.ParseIP(nodeIP(j))}); err != nil {
			return fmt.Errorf("route %s via %s: %w", dst, nodeIP(j), err)
		}
	}
	return nil
}

// run measures one forwarding mode: a Kubernetes namespace with the configuration, the
// gossip key, the Service (address vip) and its EndpointSlice; the kube-proxy rules; a
// speaker per node; then the two cuts. It returns the table's rows.
func (l *lab) run(t *testing.T, mode, vip, speakerBin string) []string {
	ctx := context.Background()
	ns := "lab-" + mode
	_, err := l.api.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(t, err)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	_, err = l.api.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "memberlist"},
		Data: map[string][]byte{k8s.GossipKeyField: key}}, metav1.CreateOptions{})
	must(t, err)
	text := fmt.Sprintf("forwarding: %s\naddress-pools:\n- {name: lab, protocol: layer2, addresses: [%s]}\n", mode, pool)
	_, err = l.api.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: k8s.ConfigRef{Namespace: ns}.InForce().Name},
		Data: map[string]string{"config": text}}, metav1.CreateOptions{})
	must(t, err)
	svc, err := l.api.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(podPort)}}},
	}, metav1.CreateOptions{})
	must(t, err)
	// Gone with the mode, so that the next mode's speakers (same pool) leave its address alone.
	defer func() {
		_ = l.api.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-1", metav1.DeleteOptions{})
		_ = l.api.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{})
	}()
	// The status the controller would write: ipMode Proxy when Herald forwards.
	svc.Status.LoadBalancer.Ingress = k8s.Ingress([]netip.Addr{netip.MustParseAddr(vip)}, mode != "none")
	svc, err = l.api.CoreV1().Services(ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{})
	must(t, err)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](podPort)}},
	}
	for i := 1; i <= nodes; i++ {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{podIP(i)}, NodeName: ptr.To(nodeName(i)),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	_, err = l.api.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
	must(t, err)

	// kube-proxy's rules, on every node: the NodePort, and the address itself when its
	// ipMode is VIP (forwarding: none).
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	for i := 1; i <= nodes; i++ {
		var vipKey *dst
		if mode == "none" {
			vipKey = &dst{ip: net.ParseIP(vip).To4(), port: 80}
		}
		kubeProxy(t, l.node[i], dst{ip: net.ParseIP(nodeIP(i)).To4(), port: nodePort}, vipKey)
	}

	// The speakers.
	stopAll := make([]func(), 0, nodes)
	for i := 1; i <= nodes; i++ {
		stopAll = append(stopAll, l.speaker(t, speakerBin, i, ns, mode))
	}
	defer func() {
		for _, stop := range stopAll {
			stop()
		}
	}()

	target := "http://" + net.JoinHostPort(vip, "80") + "/"
	c := l.httpClient()
	l.waitAnswering(t, c, target, mode)
	p := startProbe(c, target, func() string { return l.holder(vip) })
	defer p.stop()
	p.waitSteady(settle) // start-up's elections over (bounded: a mode may never be steady)
	start := time.Now()
	time.Sleep(3 * time.Second)
	base := p.between(start, start.Add(3*time.Second))
	t.Logf("%s before any cut: %d/%d failed (last error %v)", mode, base.failed, base.total, base.lastErr)
	rows := []string{fmt.Sprintf("%-10s %-9s %-14s %-22s %s", mode, "no cut", fmt.Sprintf("%d/%d", base.failed, base.total), "-", "-")}
	owner := l.owner(t, vip)
	rows = append(rows, l.cut(t, p, c, target, mode, "owner "+owner, owner))
	// The owner may have changed once its link returned: another node than the owner now
	// and the one just cut.
	cut := owner
	owner = l.owner(t, vip)
	other := nodeName(1)
	for i := 1; i <= nodes; i++ {
		if nodeName(i) != owner && nodeName(i) != cut {
			other = nodeName(i)
			break
		}
	}
	rows = append(rows, l.cut(t, p, c, target, mode, "other "+other, other))
	return rows
}

// cut takes node's link down for cutFor, brings it back, waits until the address
// answers steadily again, and returns the row of figures. It fails the test when the
// address never answers while the link is down, when it does not answer steadily again
// once the link is back, and, with forwarding: endpoints, when a request started lateAfter
// or more after the cut fails while the link is down (the failure detector and the
// failover are Herald's, and take well under that).
func (l *lab) cut(t *testing.T, p *probe, c *http.Client, target, mode, label, node string) string {
	t.Helper()
	i := int(node[1] - '0')
	link := func(up bool) {
		must(t, in(l.node[i], func() error {
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if up {
				if err := netlink.LinkSetUp(eth); err != nil {
					return err
				}
				return podRoutes(i)
			}
			return netlink.LinkSetDown(eth)
		}))
	}
	cutAt := time.Now()
	link(false)
	time.Sleep(cutFor)
	upAt := time.Now()
	link(true)
	steady := p.waitSteady(settle)
	end := time.Now()
	t.Logf("%s cut %s (%s) at %s: failures per 500 ms from the cut (link back after %s, steady %v after %s): %s",
		mode, label, node, cutAt.UTC().Format("15:04:05.000"), upAt.Sub(cutAt).Round(time.Millisecond), steady, end.Sub(cutAt).Round(time.Millisecond), p.histogram(cutAt, end))
	down := p.between(cutAt, upAt)
	after := p.between(upAt, end)
	last := "-"
	var lastAfter time.Duration = -1
	if f := down.lastFailure(); !f.IsZero() {
		lastAfter = f.Sub(cutAt)
		last = lastAfter.Round(time.Millisecond).String()
	}
	row := fmt.Sprintf("%-10s %-9s %-14s %-22s %s", mode, strings.Fields(label)[0], fmt.Sprintf("%d/%d", down.failed, down.total), last,
		fmt.Sprintf("%d/%d", after.failed, after.total))
	t.Logf("%s cut %s (%s): down %d/%d failed, last failure %s after the cut (%s); after the link returned %d/%d failed",
		mode, label, node, down.failed, down.total, last, down.lastErr, after.failed, after.total)
	if down.total-down.failed == 0 {
		t.Errorf("%s, %s's link cut: the address never answered in %s", mode, node, cutFor)
	}
	// Herald's own part: with endpoints, the failure detector (250 ms) takes the cut
	// node's pods out of IPVS, so no request that starts 500 ms after the cut or later
	// fails while the link is down, whichever node was cut.
	if mode == "endpoints" {
		// (Requests still running when the link returns are left out: the return is not
		// the cut.)
		if late := p.between(cutAt.Add(lateAfter), upAt.Add(-reqLimit)); late.failed > 0 {
			t.Errorf("forwarding: endpoints, %s's link cut: %d/%d requests started %s or more after the cut failed (the last at %s: %v), want none",
				node, late.failed, late.total, lateAfter, late.last.Sub(cutAt).Round(time.Millisecond), late.lastErr)
		}
	}
	// Every mode: once the link is back, the cut node is heard again and the address
	// answers steadily.
	if !steady {
		t.Errorf("%s, %s's link back: the address did not answer steadily within %s (%d/%d failed)", mode, node, steadyLimit, after.failed, after.total)
	}
	return row
}

// owner is the node whose MAC the client's neighbour table holds for vip.
func (l *lab) owner(t *testing.T, vip string) string {
	t.Helper()
	for deadline := time.Now().Add(stepLimit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if who := l.holder(vip); who != "" && who != "?" {
			return who
		}
	}
	t.Fatalf("the client has no neighbour entry for %s naming a node", vip)
	return ""
}

// holder is the node whose MAC the client's neighbour table holds for vip now: "" when
// it holds none, "?" when the MAC is no node's.
func (l *lab) holder(vip string) string {
	var who string
	_ = in(l.client, func() error {
		neigh, err := netlink.NeighList(0, netlink.FAMILY_V4)
		for _, n := range neigh {
			if n.IP.String() == vip && n.HardwareAddr != nil {
				who = cmp.Or(l.mac[n.HardwareAddr.String()], "?")
			}
		}
		return err
	})
	return who
}

// waitAnswering waits until the address has answered ten times (not necessarily in a
// row: a mode may fail some requests even with every link up, which the figures show).
func (l *lab) waitAnswering(t *testing.T, c *http.Client, target, mode string) {
	t.Helper()
	row := 0
	var err error
	for deadline := time.Now().Add(stepLimit); time.Now().Before(deadline) && row < 10; time.Sleep(100 * time.Millisecond) {
		var e error
		if _, e = ask(c, target); e != nil {
			err = e
			continue
		}
		row++
	}
	if row < 10 {
		t.Fatalf("forwarding: %s: %s does not answer: %v (speakers' logs in %s)", mode, target, err, l.dir)
	}
}

// speaker runs a speaker process in node i's namespace and returns what stops it
// (SIGTERM, then SIGKILL after 5 s); its log goes to the test's directory.
func (l *lab) speaker(t *testing.T, bin string, i int, ns, mode string) func() {
	t.Helper()
	kubeconfig := l.cp.Kubeconfig
	logPath := filepath.Join(l.dir, fmt.Sprintf("speaker-%s-%s.log", mode, nodeName(i)))
	logf, err := os.Create(logPath)
	must(t, err)
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--node-name", nodeName(i), "--config-namespace", ns,
		"--metrics-addr", "", "--bgp=false", "--log-format", "text", "--memberlist-join-wait", "2s",
		// memberlist's LAN defaults (200 ms probes) flap under the VM's software emulation;
		// deaths are the failure detector's to find (its defaults, 50 ms / 250 ms).
		"--memberlist-probe-interval", "1s", "--memberlist-probe-timeout", "500ms", "--memberlist-suspicion-mult", "4")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Started from a thread inside the namespace, the process lives there.
	must(t, in(l.node[i], cmd.Start))
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			netlab.Terminate(cmd.Process, done, 5*time.Second)
			logf.Close()
			if t.Failed() {
				if b, err := os.ReadFile(logPath); err == nil {
					t.Logf("speaker %s (%s), the election's and the failure detector's lines:\n%s", nodeName(i), mode, events(string(b)))
				}
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// httpClient asks from the client namespace, a new connection each time.
func (l *lab) httpClient() *http.Client {
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := in(l.client, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: reqLimit, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

func ask(c *http.Client, target string) (string, error) {
	resp, err := c.Get(target)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(b), nil
}

// probe asks every 20 ms, each request in its own goroutine, and records when each
// started and whether it succeeded.
type probe struct {
	mu      sync.Mutex
	results []result
	holders []holder // the node the client's neighbour entry names, sampled
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// holder is one sample of the client's neighbour entry for the address.
type holder struct {
	at   time.Time
	node string
}

type result struct {
	at  time.Time
	err error
}

func startProbe(c *http.Client, target string, holderOf func() string) *probe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &probe{cancel: cancel}
	p.each(ctx, holderEvery, func(at time.Time) {
		h := holder{at: at, node: holderOf()}
		p.mu.Lock()
		p.holders = append(p.holders, h)
		p.mu.Unlock()
	})
	p.each(ctx, every, func(at time.Time) {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			_, err := ask(c, target)
			p.mu.Lock()
			p.results = append(p.results, result{at: at, err: err})
			p.mu.Unlock()
		}()
	})
	return p
}

// each calls f every period (at most maxAsks times) until ctx ends, in a goroutine stop
// waits for.
func (p *probe) each(ctx context.Context, period time.Duration, f func(at time.Time)) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for n := 0; n < maxAsks; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			f(time.Now())
		}
	}()
}

func (p *probe) stop() { p.cancel(); p.wg.Wait() }

// window sums up the requests started in a span.
type window struct {
	total, failed int
	last          time.Time
	lastErr       error
}

func (w window) lastFailure() time.Time { return w.last }

func (p *probe) between(from, to time.Time) window {
	// Requests started before to end within reqLimit of it.
	time.Sleep(time.Until(to.Add(reqLimit + 100*time.Millisecond)))
	p.mu.Lock()
	defer p.mu.Unlock()
	var w window
	for _, r := range p.results {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}
		w.total++
		if r.err != nil {
			w.failed++
			if r.at.After(w.last) {
				w.last, w.lastErr = r.at, r.err
			}
		}
	}
	return w
}

// waitSteady waits until every request for d has succeeded (bounded by stepLimit) and
// says whether they did.
func (p *probe) waitSteady(d time.Duration) bool {
	start := time.Now()
	for deadline := start.Add(steadyLimit); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		// Requests started before this have ended and been recorded (as between allows).
		now := time.Now().Add(-reqLimit - 100*time.Millisecond)
		ok, n := true, 0
		p.mu.Lock()
		for _, r := range p.results {
			if r.at.After(now.Add(-d)) && r.at.Before(now) {
				n++
				ok = ok && r.err == nil
			}
		}
		p.mu.Unlock()
		if ok && n > 0 && now.Sub(start) > d {
			return true
		}
	}
	return false
}

// histogram counts the failed requests among those started in each 500 ms from from to
// to, as "failed/total@node" fields, node the one the client's neighbour entry named in
// the slot's first sample ("-": none).
func (p *probe) histogram(from, to time.Time) string {
	const slot = 500 * time.Millisecond
	n := int(to.Sub(from)/slot) + 1
	failed, total := make([]int, n), make([]int, n)
	p.mu.Lock()
	for _, r := range p.results {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}
		i := int(r.at.Sub(from) / slot)
		total[i]++
		if r.err != nil {
			failed[i]++
		}
	}
	p.mu.Unlock()
	held := make([]string, n)
	p.mu.Lock()
	for _, h := range p.holders {
		if h.at.Before(from) || !h.at.Before(to) {
			continue
		}
		if i := int(h.at.Sub(from) / slot); held[i] == "" {
			held[i] = h.node
		}
	}
	p.mu.Unlock()
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%d/%d@%s", failed[i], total[i], cmp.Or(held[i], "-")))
	}
	return strings.Join(out, " ")
}

// dst is an IPv4 address and TCP port that kube-proxy's rules match.
type dst struct {
	ip   net.IP
	port uint16
}

// kubeProxy writes, in node namespace n, the nftables rules kube-proxy (nftables mode,
// externalTrafficPolicy: Cluster) writes for the Service: traffic to the node's NodePort,
// and to the address when vip is set, is marked for masquerade and DNATed to one of the
// ready endpoints at random (every pod, whatever its node's state); marked traffic is
// masqueraded on its way out. Removed with the namespace.
func kubeProxy(t *testing.T, n netns.NsHandle, nodePort dst, vip *dst) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n)))
	must(t, err)
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "lab-kube-proxy"})
	c.FlushTable(tb)
	svc := c.AddChain(&nftables.Chain{Name: "svc-web", Table: tb})
	pre := c.AddChain(&nftables.Chain{Name: "nat-prerouting", Table: tb, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	out := c.AddChain(&nftables.Chain{Name: "nat-output", Table: tb, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	post := c.AddChain(&nftables.Chain{Name: "nat-postrouting", Table: tb, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	targets := []dst{nodePort}
	if vip != nil {
		targets = append(targets, *vip)
	}
	for _, ch := range []*nftables.Chain{pre, out} {
		for _, d := range targets {
			c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: d.ip},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, d.port)},
				&expr.Verdict{Kind: expr.VerdictJump, Chain: svc.Name},
			}})
		}
	}
	// mark for masquerade: meta mark set mark | 0x4000
	c.AddRule(&nftables.Rule{Table: tb, Chain: svc, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, ^markMasq), Xor: binary.NativeEndian.AppendUint32(nil, markMasq)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}})
	// One endpoint at random: the k-th of the remaining n-k with probability 1/(n-k),
	// the last one unconditionally.
	for k := 1; k <= nodes; k++ {
		var exprs []expr.Any
		if left := nodes - k + 1; left > 1 {
			exprs = append(exprs,
				&expr.Numgen{Register: 1, Modulus: uint32(left), Type: unix.NFT_NG_RANDOM},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, 0)})
		}
		exprs = append(exprs,
			&expr.Immediate{Register: 1, Data: net.ParseIP(podIP(k)).To4()},
			&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, podPort)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
		c.AddRule(&nftables.Rule{Table: tb, Chain: svc, Exprs: exprs})
	}
	c.AddRule(&nftables.Rule{Table: tb, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, markMasq), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{Random: true},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("kube-proxy's rules: %v", err)
	}
}

// serveHTTP answers every request to addr in ns with name, until the test ends.
func serveHTTP(t *testing.T, ns netns.NsHandle, addr, name string) {
	t.Helper()
	var ln net.Listener
	must(t, in(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, name) }), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// newNS creates a named network namespace with loopback up, deleted when the test ends.
func newNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	self, err := netns.Get()
	if err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	defer self.Close()
	// NewNamed moves its thread into the new namespace: on one of in's threads, which
	// returns to this namespace afterwards.
	var h netns.NsHandle
	if err := in(self, func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	}); err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close(); _ = netns.DeleteNamed(name) })
	must(t, in(h, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}))
	return h
}

// plugBridge links namespace ns's eth0 (address cidr) to the bridge through a veth whose
// bridge end is port.
func plugBridge(t *testing.T, br netlink.Link, port string, ns netns.NsHandle, cidr string) {
	t.Helper()
	peer := port + "x"
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index}, PeerName: peer}))
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(port); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	p, err := netlink.LinkByName(port)
	must(t, err)
	must(t, netlink.LinkSetUp(p))
	moveIn(t, peer, ns, "eth0", cidr)
}

// veth links namespace a's interface aName (address aCIDR) with b's bName (bCIDR).
func veth(t *testing.T, tmp string, a netns.NsHandle, aName, aCIDR string, b netns.NsHandle, bName, bCIDR string) {
	t.Helper()
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmp}, PeerName: tmp + "x"}))
	moveIn(t, tmp, a, aName, aCIDR)
	moveIn(t, tmp+"x", b, bName, bCIDR)
}

// moveIn moves the root namespace's link name into ns, renamed to as, with address cidr, up.
func moveIn(t *testing.T, name string, ns netns.NsHandle, as, cidr string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	must(t, err)
	must(t, netlink.LinkSetNsFd(l, int(ns)))
	must(t, in(ns, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(l, as); err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, addr(cidr)); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}))
}

func addr(cidr string) *netlink.Addr {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		panic(err)
	}
	return a
}

var in = netlab.InNamespace

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// events keeps a speaker log's lines about ownership, IPVS and the failure detector.
func events(s string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		for _, k := range []string{`msg=announcing`, `"stopped announcing"`, `"speaker found dead"`, `"speaker back"`, `"IPVS service`, `"link `, `level=ERROR`, `level=WARN`, `"speaker joined"`, `"speaker left or failed"`} {
			if strings.Contains(line, k) && !strings.Contains(line, "component=memberlist") {
				out = append(out, line)
				break
			}
		}
	}
	if len(out) > 150 {
		out = out[len(out)-150:]
	}
	return strings.Join(out, "\n")
}
