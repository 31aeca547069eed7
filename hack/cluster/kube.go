package cluster

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/hack/helm"
	"github.com/heraldlb/herald/hack/images"
	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// The cluster's address plan, besides the LAN: one pod network per node, routed between
// the nodes (and to the control plane, which calls webhooks at their pods' addresses).
const (
	podCIDRs     = "10.244.0.0/16"
	serviceCIDR  = "10.96.0.0/16"
	apiserverTLS = 6443
	// ClusterDNS is the ClusterIP of kube-system/kube-dns, the pods' nameserver: hack/labdns
	// on the control plane's address answers for the cluster's Services behind it.
	ClusterDNS    = "10.96.0.10"
	ClusterDomain = "cluster.local"
)

// PodCIDR is node i's pod network (i from 0).
func PodCIDR(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i+1)) }

// kubeNode is what a kubelet node runs: its containerd, kubelet and kube-proxy.
type kubeNode struct {
	dir   string // everything of the node: containerd's root and state, kubelet's root, logs of pods
	cgrp  string // the kubelet's cgroup root ("/herald-NAME")
	procs []*os.Process
}

// startKube brings up what turns the namespaces into a cluster: the controller manager
// and the scheduler beside the API server, and on every node a containerd, a kubelet and
// a kube-proxy, with the lab's images imported. It returns once every node is Ready.
func (c *Cluster) startKube() {
	t := c.t
	t.Helper()
	admin := c.CP.Kubeconfig
	if err := c.CP.StartComponent("kube-controller-manager",
		"--kubeconfig="+admin, "--authentication-kubeconfig="+admin, "--authorization-kubeconfig="+admin,
		"--service-account-private-key-file="+c.CP.ServiceAccountKey(), "--root-ca-file="+c.CP.CACert(),
		"--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
		"--controllers=*", "--allocate-node-cidrs=false", "--node-monitor-grace-period=20s",
	); err != nil {
		t.Fatalf("start kube-controller-manager: %v", err)
	}
	if err := c.CP.StartComponent("kube-scheduler",
		"--kubeconfig="+admin, "--authentication-kubeconfig="+admin, "--authorization-kubeconfig="+admin,
		"--leader-elect=false", "--bind-address=127.0.0.1",
	); err != nil {
		t.Fatalf("start kube-scheduler: %v", err)
	}
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		t.Fatalf("%v", err)
	}
	c.startDNS()
	tars := c.opts.Images
	if tars == nil {
		if tars, err = images.Build(context.Background(), filepath.Join(c.logDir, "images")); err != nil {
			t.Fatalf("%v", err)
		}
	}
	// Every namespace routes the pod networks to their nodes.
	for _, ns := range append([]*netlab.NS{c.CPNS}, c.nodeNSs()...) {
		c.routePods(ns)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = c.startKubeNode(i, n, bin, tars) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("%v (logs in %s)", err, c.logDir)
		}
	}
	c.waitNodesReady(90 * time.Second)
}

// routePods routes every other node's pod network through that node, from ns.
func (c *Cluster) routePods(ns *netlab.NS) {
	for i, n := range c.Nodes {
		if ns != n.NS {
			ns.Run("ip", "route", "replace", PodCIDR(i).String(), "via", n.IP4)
		}
	}
}

// LinkUp brings node n's link back after a cut, with the routes the kernel dropped when
// it went down (the Service network's and the other nodes' pod networks), as a node's
// network configuration would: without them its kubelet, kube-proxy and speaker could
// not reach the API server through the kubernetes Service again.
func (c *Cluster) LinkUp(n *Node) {
	n.NS.Run("ip", "link", "set", "eth0", "up")
	if n.kube == nil {
		return
	}
	n.NS.Run("ip", "route", "replace", serviceCIDR, "dev", "eth0")
	c.routePods(n.NS)
}

func (c *Cluster) nodeNSs() []*netlab.NS {
	var out []*netlab.NS
	for _, n := range c.Nodes {
		out = append(out, n.NS)
	}
	return out
}

// nodeDir is where node n keeps everything: under the lab's directory, so that teardown
// finds every mount and file.
func (c *Cluster) nodeDir(n *Node) string { return filepath.Join(c.logDir, "nodes", n.Name) }

// cgroupRoot is the kubelet's cgroup root of n: unique per lab and node.
func (c *Cluster) cgroupRoot(n *Node) string { return "/" + n.NS.Name }

// devicePluginSocket is where every kubelet on a host serves device plugins; kubeletStarts
// lets one kubelet start at a time because of it.
const devicePluginSocket = "/var/lib/kubelet/device-plugins/kubelet.sock"

var kubeletStarts sync.Mutex

func (c *Cluster) startKubeNode(i int, n *Node, bin string, tars map[string]string) error {
	k := &kubeNode{dir: c.nodeDir(n), cgrp: c.cgroupRoot(n)}
	n.kube = k
	for _, d := range []string{"containerd/root", "containerd/state", "runc", "kubelet", "pod-logs", "cni/net.d", "cni/ipam", "opt"} {
		if err := os.MkdirAll(filepath.Join(k.dir, d), 0o755); err != nil {
			return err
		}
	}
	n.NS.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// A route for the Service network, so that a connection to a ClusterIP (the
	// kubernetes Service, for host-network pods) leaves at all: kube-proxy rewrites it.
	n.NS.Run("ip", "route", "replace", serviceCIDR, "dev", "eth0")
	sock := filepath.Join(k.dir, "containerd.sock")
	files := map[string]string{
		"containerd.toml": containerdConfig(k.dir, sock),
		"cni/net.d/10-herald-lab.conflist": fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "herald-lab", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
`, filepath.Join(k.dir, "cni/ipam"), PodCIDR(i)),
		"kubelet.yaml": kubeletConfig(k.dir, k.cgrp, sock, n.IP4, c.CP.CACert()),
		// For dnsPolicy Default (and the node): the lab has no DNS beyond the cluster's.
		"resolv.conf": "# the lab has no DNS but the cluster's (clusterDNS)\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(k.dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	if err := c.CP.KubeconfigFor(filepath.Join(k.dir, "kubelet.kubeconfig"), "system:node:"+n.Name, "system:nodes"); err != nil {
		return err
	}
	if err := c.CP.KubeconfigFor(filepath.Join(k.dir, "kube-proxy.kubeconfig"), "system:kube-proxy"); err != nil {
		return err
	}
	if err := c.nodeDaemon(n, "containerd", "containerd", "--config", filepath.Join(k.dir, "containerd.toml")); err != nil {
		return err
	}
	if err := waitPath(sock, 30*time.Second); err != nil {
		return fmt.Errorf("%s: containerd: %w", n.Name, err)
	}
	for _, name := range slices.Sorted(maps.Keys(tars)) {
		if err := images.Import(context.Background(), sock, tars[name]); err != nil {
			return fmt.Errorf("%s: import %s: %w", n.Name, name, err)
		}
	}
	if err := createCgroups(k.cgrp); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	// Every kubelet serves its device-plugin registry at one fixed host path
	// (/var/lib/kubelet/device-plugins/kubelet.sock, whatever --root-dir says), removing
	// what it finds there first: two starting at once can fail to bind it and never get
	// Ready. One at a time, each until its socket is there.
	kubeletStarts.Lock()
	defer kubeletStarts.Unlock()
	started := time.Now()
	if err := c.nodeDaemon(n, "kubelet", filepath.Join(bin, "kubelet"),
		"--config", filepath.Join(k.dir, "kubelet.yaml"), "--kubeconfig", filepath.Join(k.dir, "kubelet.kubeconfig"),
		"--root-dir", filepath.Join(k.dir, "kubelet"), "--cert-dir", filepath.Join(k.dir, "kubelet", "pki"),
		// IPv4 alone: the pod network is IPv4 only, and what pods are asked to reach on a
		// node's InternalIPs (healthCheckNodePort, NodePorts) must be reachable from them.
		"--hostname-override", n.Name, "--node-ip", n.IP4, "--v", "1",
	); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if fi, err := os.Stat(devicePluginSocket); err == nil && fi.ModTime().After(started) {
			break
		}
	}
	return c.nodeDaemon(n, "kube-proxy", filepath.Join(bin, "kube-proxy"),
		"--kubeconfig", filepath.Join(k.dir, "kube-proxy.kubeconfig"), "--hostname-override", n.Name,
		"--proxy-mode", "nftables", "--cluster-cidr", podCIDRs, "--conntrack-max-per-core", "0",
		"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "0.0.0.0:10256", "--v", "1",
	)
}

func containerdConfig(dir, sock string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.grpc.v1.cri.v1alpha2"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/%[6]s"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[7]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
`, filepath.Join(dir, "containerd/root"), filepath.Join(dir, "containerd/state"), sock, sock+".ttrpc",
		filepath.Join(dir, "opt"), images.Pause, filepath.Join(dir, "runc"), filepath.Join(dir, "cni/net.d"))
}

func kubeletConfig(dir, cgroupRoot, sock, ip, ca string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
resolvConf: %[4]s
clusterDNS: [%[7]s]
clusterDomain: %[8]s
podLogsDir: %[5]s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %[6]s
authorization:
  mode: AlwaysAllow
`, cgroupRoot, sock, ip, filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "pod-logs"), ca, ClusterDNS, ClusterDomain)
}

// nodeDaemon starts a long-running process of node n in its network namespace with
// nsenter (ip netns exec would remount /sys and hide the cgroup mounts the kubelet
// needs), logging to NODE-NAME.log.
func (c *Cluster) nodeDaemon(n *Node, name string, argv ...string) error {
	logf, err := os.OpenFile(filepath.Join(c.logDir, n.Name+"-"+name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.NS.Name, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !c.opts.Detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start %s: %w", n.Name, name, err)
	}
	n.kube.procs = append(n.kube.procs, cmd.Process)
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(filepath.Join(n.kube.dir, name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

func waitPath(p string, limit time.Duration) error {
	for deadline := time.Now().Add(limit); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear in %s", p, limit)
		}
	}
}

// waitNodesReady waits until every node is registered and Ready.
func (c *Cluster) waitNodesReady(limit time.Duration) {
	c.t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(500 * time.Millisecond) {
		nodes, err := c.Kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		ready := 0
		if err == nil {
			for _, n := range nodes.Items {
				for _, cond := range n.Status.Conditions {
					if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
						ready++
					}
				}
			}
		}
		if ready == len(c.Nodes) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d of %d nodes Ready after %s (logs in %s)", ready, len(c.Nodes), limit, c.logDir)
		}
	}
}

// Kubectl runs kubectl against the cluster from the client's namespace and returns its
// combined output.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		return "", err
	}
	out, err := c.Client.Command(append([]string{filepath.Join(bin, "kubectl"), "--kubeconfig", c.CP.Kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

// Helm runs helm (Herald's, hack/build-helm.sh) against the cluster from the client
// namespace, as an admin would, with helm's cache and configuration in the cluster's
// directory.
func (c *Cluster) Helm(args ...string) (string, error) {
	bin, err := helm.Binary(context.Background())
	if err != nil {
		return "", err
	}
	cmd := c.Client.Command(append([]string{bin, "--kubeconfig", c.CP.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), helm.Env(filepath.Join(c.logDir, "helm"))...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TeardownNode ends everything a kubelet node started and removes what it left: the
// kubelet and kube-proxy, every container and shim (found by the node's cgroups, since
// containers live in namespaces of their own), containerd, every mount under the node's
// directory, the node's cgroups, and /var/log/containers links into its directory. It
// is safe to repeat, and works from the directory alone (the lab's `down`).
func TeardownNode(dir, cgroupRoot string) {
	for _, name := range []string{"kubelet", "kube-proxy"} {
		stopPidFile(filepath.Join(dir, name+".pid"))
	}
	// Containers and shims: everything in the node's cgroups, until none is left.
	for range 20 {
		pids := cgroupProcs(cgroupRoot)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	killShims(dir)
	stopPidFile(filepath.Join(dir, "containerd.pid"))
	unmountUnder(dir)
	removeCgroups(cgroupRoot)
	if links, err := os.ReadDir("/var/log/containers"); err == nil {
		for _, l := range links {
			p := filepath.Join("/var/log/containers", l.Name())
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir) {
				_ = os.Remove(p)
			}
		}
	}
}

// stopPidFile ends the process group of the process named in a pid file: SIGTERM, then
// SIGKILL.
func stopPidFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	_ = k8stest.StopProcessGroup(pid, 5*time.Second)
	_ = os.Remove(path)
}

// killShims kills containerd's shims for the node: their command line names the node's
// containerd socket.
func killShims(dir string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), "containerd-shim") && strings.Contains(string(cmdline), dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cgroupMounts returns the mount points of the cgroup hierarchies (v1 and v2).
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				out = append(out, fields[4])
			}
		}
	}
	return out
}

func cgroupProcs(root string) []int {
	var out []int
	for _, m := range cgroupMounts() {
		_ = filepath.WalkDir(filepath.Join(m, root), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// createCgroups makes the kubelet's cgroup root in every hierarchy (it refuses to start
// without), giving a v1 cpuset the CPUs and memory nodes of its parent.
func createCgroups(root string) error {
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("set %s of cgroup %s: %w", f, d, err)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes the cgroup directories under root in every hierarchy, deepest
// first.
func removeCgroups(root string) {
	for _, m := range cgroupMounts() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(m, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i])
		}
	}
}

// unmountUnder unmounts every mount point under dir, deepest first.
func unmountUnder(dir string) {
	for range 5 {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return
		}
		var points []string
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
				points = append(points, f[4])
			}
		}
		if len(points) == 0 {
			return
		}
		slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
		for _, p := range points {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
	}
}

// startDNS gives the cluster its DNS: hack/labdns on the control plane's address, behind
// the Service kube-system/kube-dns (ClusterDNS) with an EndpointSlice of its own, as a
// cluster's DNS is reached; kube-proxy on each node takes pods' queries there.
func (c *Cluster) startDNS() {
	t := c.t
	t.Helper()
	root, err := images.Root()
	if err != nil {
		t.Fatalf("%v", err)
	}
	bin := filepath.Join(c.logDir, "bin", "labdns")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./hack/labdns")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as the images' binaries: their packages are built already
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build hack/labdns: %v\n%s", err, out)
	}
	c.daemon(c.CPNS, "labdns", bin, "--kubeconfig", c.CP.Kubeconfig, "--listen", net.JoinHostPort(cpIP4, "53"), "--domain", ClusterDomain)
	ctx := context.Background()
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{ClusterIP: ClusterDNS, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: udp}, {Name: "dns-tcp", Port: 53, Protocol: tcp},
		}},
	}
	if _, err := c.Kube.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service kube-dns: %v", err)
	}
	dns, dnsTCP := "dns", "dns-tcp"
	port := int32(53)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns-labdns", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kube-dns", discoveryv1.LabelManagedBy: "herald-lab",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{cpIP4}, Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &dns, Port: &port, Protocol: &udp}, {Name: &dnsTCP, Port: &port, Protocol: &tcp}},
	}
	if _, err := c.Kube.DiscoveryV1().EndpointSlices("kube-system").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the EndpointSlice of kube-dns: %v", err)
	}
}

func ptrTo[T any](v T) *T { return &v }
