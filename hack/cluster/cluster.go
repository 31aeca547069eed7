package cluster

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/controller"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/webhook"
)

// Addresses of the lab network.
const (
	cpIP4 = "192.168.10.5"
	// ClientIP4 is the client namespace's address.
	ClientIP4 = "192.168.10.2"
	// ServicePort is where the stand-in servers listen.
	ServicePort = 8090
)

// DefaultConfig is the lab's address pool. Forwarding is off: this kernel has no ip_vs,
// so the stand-in for kube-proxy in each node takes the traffic (IPVS is tested in a VM).
const DefaultConfig = `
forwarding: none
address-pools:
- name: default
  protocol: layer2
  addresses:
  - 192.168.10.90-192.168.10.100
  - fd10::90-fd10::a0
`

// TB is what a Cluster needs of a test; the lab command provides it too.
type TB interface {
	netlab.TB
	Logf(format string, args ...any)
	Failed() bool
}

// Cluster is a running lab.
type Cluster struct {
	t       TB
	opts    Options
	Switch  *netlab.NS
	CPNS    *netlab.NS
	Client  *netlab.NS
	Nodes   []*Node
	CP      *k8stest.ControlPlane
	Kube    kubernetes.Interface
	Router  *Router
	Probe   *netlab.Prober
	logDir  string
	speaker string // binary

	statusMu sync.Mutex
	statusAt map[string]time.Time // "namespace/name" -> status write accepted
}

// Node is one lab node.
type Node struct {
	Name     string
	NS       *netlab.NS
	IP4, IP6 string
	MAC      string
	speaker  *exec.Cmd
	exited   chan struct{}
	kube     *kubeNode // with Options.Kubelets
}

// Options shape a cluster.
type Options struct {
	Nodes  int    // default 3
	Config string // default DefaultConfig
	// NoConfig leaves the ConfigMap to the caller (the lab applies the sample).
	NoConfig bool
	// SkipMemberWait does not wait for the speakers to see each other (memberlist off).
	SkipMemberWait bool
	SpeakerFlags   []string
	// NamePrefix names the namespaces prefix+role ("cp", "client", "node1", …); by
	// default they get random names.
	NamePrefix string
	// Dir keeps the logs and the control plane's files; default a temporary directory,
	// removed unless the test failed.
	Dir string
	// Detach lets every process outlive the caller (the lab); they end with their
	// namespaces.
	Detach bool
	// ControllerBin runs the controller as this binary inside the control plane's
	// namespace; by default it runs in this process.
	ControllerBin string
	// Webhook registers the controller's admission webhook for the configuration (the
	// controller then runs as ControllerBin, serving it on the control plane's loopback).
	Webhook bool
	// Router, when set, starts an FRR router on the bridge with the bgpd configuration it
	// returns for the nodes, before the speakers.
	Router func(nodes []*Node) string
	// RouterBFD, when set, runs FRR's bfdd on the router with this configuration
	// (BFDDConfig).
	RouterBFD string
	// ServerCmd is the stand-in server's command line, the node's name appended; by
	// default this test binary with HERALD_E2E_SERVE set.
	ServerCmd []string
	// Kubelets makes a real cluster: every node runs a containerd, a kubelet and a
	// kube-proxy, the control plane a controller manager and a scheduler, and nothing of
	// Herald runs until the caller installs it (kubectl apply -k config, as an admin
	// does). The speaker binary, Config and the options about speakers and the
	// controller are then unused.
	Kubelets bool
	// Images are the image tars to import on every node (hack/images.Build); by default
	// they are built into Dir.
	Images map[string]string
}

// Start brings up a lab cluster; everything is torn down when the test ends (unless
// opts.Detach). The caller checks for root (netlab.Require in tests).
func Start(t TB, speakerBin string, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Config == "" {
		opts.Config = DefaultConfig
	}
	logDir := opts.Dir
	if logDir == "" {
		var err error
		if logDir, err = os.MkdirTemp("", "herald-e2e-logs-"); err != nil {
			t.Fatalf("%v", err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("logs kept in %s", logDir)
				return
			}
			os.RemoveAll(logDir)
		})
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	c := &Cluster{t: t, opts: opts, speaker: speakerBin, logDir: logDir}
	ns := c.newNS
	c.Switch = ns("sw")
	c.Switch.Bridge("br0")
	c.CPNS = ns("cp")
	netlab.Plug(t, c.Switch, "br0", "p-cp", c.CPNS, "eth0")
	c.CPNS.Addr("eth0", cpIP4+"/24")
	c.Client = ns("client")
	netlab.Plug(t, c.Switch, "br0", "p-client", c.Client, "eth0")
	c.Client.Addr("eth0", ClientIP4+"/24")
	c.Client.Addr("eth0", "fd10::2/64")
	for i := range opts.Nodes {
		n := &Node{Name: fmt.Sprintf("node%d", i+1), IP4: fmt.Sprintf("192.168.10.%d", 11+i), IP6: fmt.Sprintf("fd10::%d", 11+i)}
		n.NS = ns(n.Name)
		netlab.Plug(t, c.Switch, "br0", "p-"+n.Name, n.NS, "eth0")
		n.NS.Addr("eth0", n.IP4+"/24")
		n.NS.Addr("eth0", n.IP6+"/64")
		// The kernel never answers ARP for the stand-in's addresses on loopback.
		n.NS.Run("sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.eth0.arp_ignore=1")
		// A node's network configuration keeps its addresses across a link flap (Linux
		// flushes IPv6 ones on link down otherwise).
		n.NS.Run("sysctl", "-q", "-w", "net.ipv6.conf.eth0.keep_addr_on_down=1")
		n.MAC = n.NS.MAC("eth0")
		c.Nodes = append(c.Nodes, n)
	}

	ctx := context.Background()
	cpOpts := k8stest.Options{
		Dir: filepath.Join(c.logDir, "control-plane"), BindAddress: cpIP4,
		CommandPrefix: []string{"ip", "netns", "exec", c.CPNS.Name}, Dial: c.CPNS.DialContext,
		Detach: opts.Detach, Cluster: opts.Kubelets,
	}
	if opts.Kubelets {
		cpOpts.Port = apiserverTLS
	}
	cp, err := k8stest.Start(ctx, cpOpts)
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	if !opts.Detach {
		t.Cleanup(cp.Stop)
	}
	c.CP = cp
	c.Kube = kubernetes.NewForConfigOrDie(cp.Config)
	if opts.Kubelets {
		if !opts.Detach {
			t.Cleanup(func() {
				for _, n := range c.Nodes {
					TeardownNode(c.nodeDir(n), c.cgroupRoot(n))
				}
			})
		}
		c.startKube()
		if opts.Router != nil {
			c.Router = c.StartRouter(opts.Router(c.Nodes))
		}
		c.Probe = netlab.NewProber(t, c.Client, "eth0", netip.MustParseAddr(ClientIP4))
		return c
	}

	c.apply(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "herald-system"}})
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	if _, err := c.Kube.CoreV1().Secrets("herald-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "memberlist"}, Data: map[string][]byte{"secretkey": key},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("%v", err)
	}
	if !opts.NoConfig {
		c.SetConfig(opts.Config)
	}
	for _, n := range c.Nodes {
		c.createNode(n)
	}

	c.startController()

	if opts.Router != nil {
		c.Router = c.StartRouter(opts.Router(c.Nodes))
	}
	for _, n := range c.Nodes {
		c.startServer(n)
		c.StartSpeaker(n, opts.SpeakerFlags...)
	}
	c.Probe = netlab.NewProber(t, c.Client, "eth0", netip.MustParseAddr(ClientIP4))
	if !opts.SkipMemberWait {
		c.WaitMembers(len(c.Nodes), 20*time.Second)
	}
	return c
}

// newNS makes a namespace for role, named by opts.NamePrefix when set.
func (c *Cluster) newNS(role string) *netlab.NS {
	if c.opts.NamePrefix != "" {
		return netlab.NewNamedNS(c.t, c.opts.NamePrefix+role)
	}
	return netlab.NewNS(c.t, role)
}

// waitFile waits up to ten seconds for a daemon to create path.
func (c *Cluster) waitFile(path string) {
	c.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not appear (logs in %s)", path, c.logDir)
		}
	}
}

// startController runs the controller: in this process, against the API server in its
// namespace, or as opts.ControllerBin inside that namespace.
func (c *Cluster) startController() {
	if c.opts.ControllerBin != "" {
		args := []string{c.opts.ControllerBin, "--kubeconfig", c.CP.Kubeconfig, "--metrics-addr", "127.0.0.1:7472", "--log-format", "text"}
		if c.opts.Webhook {
			args = append(args, "--webhook-addr", "127.0.0.1:9443", "--webhook-ips", "127.0.0.1", "--webhook-dns-names", "")
			c.registerWebhook("https://127.0.0.1:9443/validate-config")
		} else {
			args = append(args, "--webhook-addr", "")
		}
		c.daemon(c.CPNS, "controller", args...)
		return
	}
	// The controller's client notes when the API server accepted each status write.
	cfg := rest.CopyConfig(c.CP.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return &statusClock{rt: rt, c: c} }
	ctrl, err := controller.New(controller.Options{Client: kubernetes.NewForConfigOrDie(cfg), Logger: c.logger("controller")})
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	c.t.Cleanup(func() { cancel(); <-done })
}

// statusClock notes when the controller sent each Service status write that the API
// server accepted.
type statusClock struct {
	rt http.RoundTripper
	c  *Cluster
}

func (s *statusClock) RoundTrip(r *http.Request) (*http.Response, error) {
	at := time.Now() // sent: the API server accepts it a moment later
	resp, err := s.rt.RoundTrip(r)
	if err == nil && r.Method == http.MethodPut && resp.StatusCode == http.StatusOK && strings.HasSuffix(r.URL.Path, "/status") && strings.Contains(r.URL.Path, "/services/") {
		parts := strings.Split(strings.TrimSuffix(r.URL.Path, "/status"), "/")
		s.c.statusMu.Lock()
		if s.c.statusAt == nil {
			s.c.statusAt = map[string]time.Time{}
		}
		s.c.statusAt[parts[len(parts)-3]+"/"+parts[len(parts)-1]] = at
		s.c.statusMu.Unlock()
	}
	return resp, err
}

// StatusWritten returns when the controller (in this process) sent the last write of the
// Service's status that the API server accepted; zero if none.
func (c *Cluster) StatusWritten(namespace, name string) time.Time {
	c.statusMu.Lock()
	defer c.statusMu.Unlock()
	return c.statusAt[namespace+"/"+name]
}

// daemon starts a long-running process inside ns, logging to NAME.log, ended when the
// test ends (or with its namespace, when detached).
func (c *Cluster) daemon(ns *netlab.NS, name string, argv ...string) *exec.Cmd {
	c.t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.logDir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	cmd := ns.Command(argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if c.opts.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	logf.Close() // the child has its own copy
	if !c.opts.Detach {
		c.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	return cmd
}

// registerWebhook registers the configuration webhook at url, as config/controller.yaml
// does through a Service; the controller writes its caBundle.
func (c *Cluster) registerWebhook(url string) {
	c.t.Helper()
	vwc := webhook.Registration("herald-config", "herald-system", url)
	if _, err := c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(context.Background(), vwc, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("%v", err)
	}
}

func (c *Cluster) logger(name string) *slog.Logger {
	f, err := os.Create(filepath.Join(c.logDir, name+".log"))
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	c.t.Cleanup(func() { f.Close() })
	return slog.New(slog.NewTextHandler(f, nil))
}

func (c *Cluster) apply(ns *corev1.Namespace) {
	if _, err := c.Kube.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("%v", err)
	}
}

// SetConfig writes the Herald ConfigMap.
func (c *Cluster) SetConfig(text string) {
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "herald-system", Name: "config"}, Data: map[string]string{"config": text}}
	if _, err := c.Kube.CoreV1().ConfigMaps("herald-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		if _, err := c.Kube.CoreV1().ConfigMaps("herald-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			c.t.Fatalf("%v", err)
		}
	}
}

// createNode registers n as a Ready Node with its InternalIP (there is no kubelet).
func (c *Cluster) createNode(n *Node) {
	ctx := context.Background()
	node, err := c.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP4}, {Type: corev1.NodeInternalIP, Address: n.IP6}}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if _, err := c.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		c.t.Fatalf("%v", err)
	}
}

// startServer runs the stand-in for the Service's pods and kube-proxy on n, answering
// HTTP on ServicePort with the node's name: opts.ServerCmd, or this test binary again.
func (c *Cluster) startServer(n *Node) {
	argv := append(append([]string{}, c.opts.ServerCmd...), n.Name)
	if len(c.opts.ServerCmd) == 0 {
		argv = []string{"env", "HERALD_E2E_SERVE=" + n.Name, os.Args[0], "-test.run=^$"}
	}
	c.daemon(n.NS, n.Name+"-server", argv...)
}

// Serve is the stand-in server's main: it answers every HTTP request on ServicePort with
// the node's name.
func Serve(name string) error {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", ServicePort))
	if err != nil {
		return err
	}
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, name)
	}))
}

// StartSpeaker starts n's speaker process.
func (c *Cluster) StartSpeaker(n *Node, flags ...string) {
	c.t.Helper()
	args := append([]string{c.speaker, "--kubeconfig", c.CP.Kubeconfig, "--node-name", n.Name,
		"--metrics-addr", "127.0.0.1:7473", "--log-format", "text", "--log-level", "debug"}, flags...)
	cmd := c.daemon(n.NS, n.Name+"-speaker", args...)
	n.speaker, n.exited = cmd, make(chan struct{})
	exited := n.exited
	go func() { _ = cmd.Wait(); close(exited) }()
}

// SpeakerPid is the process ID of n's speaker, 0 when none runs.
func (n *Node) SpeakerPid() int {
	if n.speaker == nil {
		return 0
	}
	return n.speaker.Process.Pid
}

// Signal sends sig to n's speaker without waiting for it to exit.
func (c *Cluster) Signal(n *Node, sig syscall.Signal) {
	if n.speaker != nil {
		_ = n.speaker.Process.Signal(sig)
	}
}

// StopSpeaker signals n's speaker and waits for it to exit. `ip netns exec` passes the
// signal on, as it execs the speaker in place.
func (c *Cluster) StopSpeaker(n *Node, sig syscall.Signal) {
	if n.speaker == nil {
		return
	}
	_ = n.speaker.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		_ = n.speaker.Process.Kill()
		<-n.exited
	}
	n.speaker = nil
}

// Metrics returns n's speaker's metrics text.
func (c *Cluster) Metrics(n *Node) (string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: n.NS.DialContext}}
	resp, err := client.Get("http://127.0.0.1:7473/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// WaitMembers waits until every running speaker sees want live speakers.
func (c *Cluster) WaitMembers(want int, limit time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	line := fmt.Sprintf("herald_speaker_members %d\n", want)
	for _, n := range c.Nodes {
		if n.speaker == nil {
			continue
		}
		for {
			m, err := c.Metrics(n)
			if err == nil && strings.Contains(m, line) {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("%s does not see %d speakers (logs in %s): %v", n.Name, want, c.logDir, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// CreateService creates a LoadBalancer Service on ServicePort, waits for its addresses,
// and puts them on every node's stand-in.
func (c *Cluster) CreateService(name string, mod func(*corev1.Service)) []netip.Addr {
	c.t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: ServicePort, TargetPort: intstr.FromInt32(ServicePort)}},
		},
	}
	if mod != nil {
		mod(svc)
	}
	if _, err := c.Kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("%v", err)
	}
	ips := c.WaitAddresses("default", name)
	c.StandIn(ips)
	return ips
}

// WaitAddresses waits until the Service has addresses in its status and returns them.
func (c *Cluster) WaitAddresses(namespace, name string) []netip.Addr {
	c.t.Helper()
	ctx := context.Background()
	var ips []netip.Addr
	for deadline := time.Now().Add(10 * time.Second); len(ips) == 0; time.Sleep(50 * time.Millisecond) {
		s, err := c.Kube.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			c.t.Fatalf("%v", err)
		}
		for _, in := range s.Status.LoadBalancer.Ingress {
			ips = append(ips, netip.MustParseAddr(in.IP))
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("Service %s got no address", name)
		}
	}
	return ips
}

// StandIn puts ips on every node's loopback, where the stand-in server answers for them.
func (c *Cluster) StandIn(ips []netip.Addr) {
	for _, n := range c.Nodes {
		for _, ip := range ips {
			n.NS.Run("ip", "addr", "replace", netip.PrefixFrom(ip, ip.BitLen()).String(), "dev", "lo")
		}
	}
}

// Connect makes an HTTP request from the client to ip and returns the name of the node
// that answered.
func (c *Cluster) Connect(ip netip.Addr, timeout time.Duration) (string, error) {
	a, err := c.ConnectFrom(ip, 0, timeout)
	return a.Who, err
}

// Answer is what one request from the client learned.
type Answer struct {
	Who  string // "POD on NODE" from a pod, the node's name from a stand-in server
	Seen string // the client address the server saw (pods only)
	Port uint16 // the client's source port
}

// ConnectFrom is Connect from the client's source port sport (0: the kernel's choice).
func (c *Cluster) ConnectFrom(ip netip.Addr, sport uint16, timeout time.Duration) (Answer, error) {
	var a Answer
	dial := c.Client.DialFrom(sport)
	record := func(ctx context.Context, network, address string) (net.Conn, error) {
		conn, err := dial(ctx, network, address)
		if err == nil {
			a.Port = uint16(conn.LocalAddr().(*net.TCPAddr).Port)
		}
		return conn, err
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: record, DisableKeepAlives: true}}
	resp, err := client.Get("http://" + net.JoinHostPort(ip.String(), fmt.Sprint(ServicePort)) + "/")
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	a.Who, a.Seen = strings.TrimSpace(string(b)), resp.Header.Get("X-Client")
	return a, err
}

// NodeByMAC returns the node whose eth0 has mac.
func (c *Cluster) NodeByMAC(mac string) *Node {
	for _, n := range c.Nodes {
		if n.MAC == mac {
			return n
		}
	}
	return nil
}

// Node returns the named node.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

// Owners asks the LAN who has ip (ARP or NDP) and returns the names of the nodes that
// answered within window.
func (c *Cluster) Owners(ip netip.Addr, window time.Duration) []string {
	c.t.Helper()
	var macs []string
	var err error
	if ip.Is4() {
		macs, err = c.Probe.AskARP(ip, window)
	} else {
		macs, err = c.Probe.AskNDP(ip, window)
	}
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	var out []string
	for _, m := range macs {
		if n := c.NodeByMAC(m); n != nil {
			out = append(out, n.Name)
		} else {
			out = append(out, "unknown "+m)
		}
	}
	return out
}

// LogDir is where every component's log is.
func (c *Cluster) LogDir() string { return c.logDir }
