// Command lab brings up Herald's lab on this machine and tears it down.
//
//	go run ./hack/lab up                # start (or show, when already running); safe to repeat
//	go run ./hack/lab -install helm up  # the same, Herald installed with its Helm chart
//	go run ./hack/lab status            # what runs, and the Services
//	go run ./hack/lab down              # stop everything and remove what the lab made
//	go run ./hack/lab conformance DIR [FOCUS [SKIP]]  # Kubernetes' LoadBalancers specs (make conformance)
//
// The lab is a real Kubernetes cluster in network namespaces on one bridge: a control
// plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built from their
// Go modules), three nodes each running containerd, a kubelet and kube-proxy, an FRR
// router and a client. Herald runs in it as pods from the image built here, installed the
// way a cluster admin installs it (kubectl apply -k of config/, through the overlay
// hack/lab/overlay; or, with -install helm, helm install of charts/herald with the
// configuration as a value), in front of a Deployment of three real pods. Everything lives in
// namespaces named herald-lab-* and in /var/lib/herald-lab (kubeconfig, the logs of every
// component); nothing is added to this machine's own network namespace. It needs root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/heraldlb/herald/hack/cluster"
	"github.com/heraldlb/herald/hack/helm"
	"github.com/heraldlb/herald/hack/images"
	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

const prefix = "herald-lab-"

// dir holds the lab's state: outside the checkout, so that FRR (which drops to user frr)
// reaches its files wherever the checkout is (a home directory is often mode 0700).
const dir = "/var/lib/herald-lab"

var roles = []string{"sw", "cp", "client", "router", "runner", "node1", "node2", "node3"}

// The runner's network: a subnet of its own behind the router, as a client outside the
// cluster's network is (make conformance runs Kubernetes' e2e suite from there).
const (
	runnerNet      = "203.0.113.0/24"
	runnerRouterIP = "203.0.113.1"
	runnerIP       = "203.0.113.2"
)

func main() {
	install := flag.String("install", "kustomize", "how up installs Herald: kustomize (kubectl apply -k, through hack/lab/overlay) or helm (helm install charts/herald)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lab [-install kustomize|helm] up|status|down, or lab conformance E2E_BIN_DIR [FOCUS [SKIP]]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 1 || (flag.NArg() > 1 && flag.Arg(0) != "conformance") || flag.NArg() > 4 || (*install != "kustomize" && *install != "helm") {
		flag.Usage()
		os.Exit(2)
	}
	l, err := newLab()
	if err == nil {
		l.install = *install
		switch flag.Arg(0) {
		case "up":
			err = l.up()
		case "status":
			err = l.status()
		case "down":
			err = l.down()
		case "conformance":
			if flag.NArg() < 2 {
				err = errors.New("lab conformance needs the directory of e2e.test and agnhost (hack/conformance/build.sh prints it)")
			} else {
				args := append(flag.Args()[2:], "", "")
				err = l.conformance(flag.Arg(1), args[0], args[1])
			}
		default:
			err = fmt.Errorf("unknown command %q: want up, status, down or conformance", flag.Arg(0))
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

type lab struct {
	root, kubectl string
	install       string // "kustomize" or "helm"
}

func newLab() (*lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab makes network namespaces: run it as root")
	}
	root, err := images.Root()
	if err != nil {
		return nil, errors.New("run the lab from the repository (make lab)")
	}
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		return nil, err
	}
	return &lab{root: root, kubectl: filepath.Join(bin, "kubectl")}, nil
}

func (l *lab) kubeconfig() string { return filepath.Join(dir, "control-plane", "kubeconfig") }

// running reports whether a complete lab is up and its API server answers.
func (l *lab) running() bool {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return false
	}
	for _, r := range roles {
		if !strings.Contains(string(out), prefix+r) {
			return false
		}
	}
	return l.inClient(nil, l.kubectl, "--kubeconfig", l.kubeconfig(), "get", "--raw", "/readyz") == nil
}

// labT lets the cluster harness run outside a test: a failure stops the bring-up, and
// cleanups are left to `lab down`, since the lab is meant to stay up.
type labT struct{}

type failure struct{ msg string }

func (labT) Helper()                           {}
func (labT) Cleanup(func())                    {}
func (labT) Failed() bool                      { return false }
func (labT) Logf(format string, args ...any)   { fmt.Printf(format+"\n", args...) }
func (labT) Fatalf(format string, args ...any) { panic(failure{fmt.Sprintf(format, args...)}) }
func step(format string, args ...any)          { fmt.Printf("==> "+format+"\n", args...) }

func (l *lab) up() (err error) {
	if l.running() {
		fmt.Println("The lab is already running.")
		return l.show()
	}
	if err := l.down(); err != nil { // the leftovers of a lab that did not finish
		return err
	}
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(failure)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s (logs in %s; make lab-down removes what started)", f.msg, dir)
		}
	}()
	if l.install == "helm" {
		step("the helm command (Helm v4, built once into the cache by hack/build-helm.sh)")
		if _, err := helm.Binary(context.Background()); err != nil {
			return err
		}
	}
	step("building Herald's image, the pause image and the demo application (no Docker: hack/images)")
	tars, err := images.Build(context.Background(), filepath.Join(dir, "images"))
	if err != nil {
		return err
	}
	step("a cluster in namespaces %s{sw,cp,client,router,node1..3}: control plane, and on every node containerd, a kubelet and kube-proxy", prefix)
	c := cluster.Start(labT{}, "", cluster.Options{
		NamePrefix: prefix, Dir: dir, Detach: true, Kubelets: true, Images: tars,
		Router: func(nodes []*cluster.Node) string { return cluster.FRRConfig(nodes) },
	})
	fmt.Printf("    nodes Ready after %.0fs\n", time.Since(start).Seconds())
	kc := []string{l.kubectl, "--kubeconfig", l.kubeconfig()}
	sample, err := os.ReadFile(filepath.Join(l.root, "config/samples/configmap.yaml"))
	if err != nil {
		return err
	}
	cm := filepath.Join(dir, "configmap.yaml")
	text := labConfigMap(sample)
	if err := os.WriteFile(cm, []byte(text), 0o644); err != nil {
		return err
	}
	manifests := []string{"-f", filepath.Join(l.root, "hack/lab/demo.yaml"),
		"-f", filepath.Join(l.root, "config/samples/service.yaml"), "-f", filepath.Join(l.root, "config/samples/service-bgp.yaml")}
	switch l.install {
	case "helm":
		step("installing Herald as a cluster admin does with Helm: helm install herald charts/herald, the configuration as the value config")
		values, err := helmValues(text)
		if err != nil {
			return err
		}
		vf := filepath.Join(dir, "values.yaml")
		if err := os.WriteFile(vf, values, 0o644); err != nil {
			return err
		}
		out, err := c.Helm(helm.InstallArgs(helm.Chart(l.root), vf)...)
		fmt.Print(out)
		if err != nil {
			return fmt.Errorf("helm install: %w", err)
		}
		step("applying the demo Deployment and two Services")
	default:
		step("installing Herald as a cluster admin does: kubectl apply -k hack/lab/overlay (config/ with the image built here)")
		if err := l.inClient(os.Stdout, append(kc, "apply", "-k", filepath.Join(l.root, "hack/lab/overlay"))...); err != nil {
			return err
		}
		step("applying config/samples: the address pools (with forwarding: none: this kernel has no ip_vs, so kube-proxy delivers; and relay-local), the demo Deployment and two Services")
		manifests = append([]string{"-f", cm}, manifests...)
	}
	if err := l.inClient(os.Stdout, append(append(kc, "apply"), manifests...)...); err != nil {
		return err
	}
	step("waiting for Herald's pods and the demo's to be Ready")
	for _, w := range [][]string{
		{"-n", "herald-system", "rollout", "status", "deployment/herald-controller", "--timeout=120s"},
		{"-n", "herald-system", "rollout", "status", "daemonset/herald-speaker", "--timeout=120s"},
		{"rollout", "status", "deployment/nginx", "--timeout=120s"},
	} {
		if err := l.inClient(os.Stdout, append(kc, w...)...); err != nil {
			return err
		}
	}
	c.WaitAddresses("default", "nginx")
	bgpIPs := c.WaitAddresses("default", "nginx-bgp")
	step("waiting for the router to learn %s from every node", bgpIPs[0])
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if paths, err := c.Router.Paths(bgpIPs[0].String() + "/32"); err == nil && len(paths) == len(c.Nodes) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the router did not learn %s from every node in a minute (logs in %s)", bgpIPs[0], dir)
		}
	}
	// The client reaches the BGP pool through the router, which forwards by its BGP routes.
	c.Client.Run("ip", "route", "replace", "198.51.100.0/24", "via", cluster.RouterIP4)
	step("a runner in %s behind the router (%s), where a client from outside the cluster's network sits", runnerNet, prefix+"runner")
	runner := netlab.NewNamedNS(labT{}, prefix+"runner")
	netlab.Veth(labT{}, c.Router.NS, "runner0", runner, "eth0")
	c.Router.NS.Addr("runner0", runnerRouterIP+"/24")
	runner.Addr("eth0", runnerIP+"/24")
	runner.Run("ip", "route", "add", "default", "via", runnerRouterIP)
	for _, ns := range append([]*netlab.NS{c.CPNS, c.Client}, nodeNSs(c)...) {
		ns.Run("ip", "route", "replace", runnerNet, "via", cluster.RouterIP4)
	}
	fmt.Printf("\nThe lab is up (%.0fs).\n", time.Since(start).Seconds())
	return l.show()
}

// helmValues returns the chart's values for the lab: the configuration from the text of
// a ConfigMap manifest. The image is the chart's default, herald:dev, which the lab built.
func helmValues(configMap string) ([]byte, error) {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal([]byte(configMap), &cm); err != nil {
		return nil, fmt.Errorf("the lab's ConfigMap: %w", err)
	}
	if cm.Data["config"] == "" {
		return nil, errors.New("the lab's ConfigMap has no key config")
	}
	return yaml.Marshal(map[string]any{"config": cm.Data["config"]})
}

// inClient runs a command in the client namespace, where the lab's network is reachable.
func (l *lab) inClient(out *os.File, argv ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", prefix + "client"}, argv...)...)
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, os.Stderr
	}
	return cmd.Run()
}

func (l *lab) show() error {
	kc := []string{l.kubectl, "--kubeconfig", l.kubeconfig()}
	fmt.Println("\n$ kubectl get pods -n herald-system -o wide")
	if err := l.inClient(os.Stdout, append(kc, "get", "pods", "-n", "herald-system", "-o", "wide")...); err != nil {
		return err
	}
	fmt.Println("\n$ kubectl get svc")
	_ = l.inClient(os.Stdout, append(kc, "get", "svc")...)
	out, err := exec.Command("ip", "netns", "exec", prefix+"client", l.kubectl, "--kubeconfig", l.kubeconfig(),
		"get", "svc", "nginx", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}").Output()
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(string(out)))
	if err != nil {
		return fmt.Errorf("nginx has no EXTERNAL-IP yet: %q", out)
	}
	fmt.Printf("\n$ arping -c 1 %s        # from the client: one node answers, with its own MAC\n", ip)
	_ = l.inClient(os.Stdout, "arping", "-c", "1", "-w", "2", "-I", "eth0", ip.String())
	fmt.Println("\nthe nodes' MACs:")
	for _, n := range []string{"node1", "node2", "node3"} {
		mac, _ := exec.Command("ip", "netns", "exec", prefix+n, "cat", "/sys/class/net/eth0/address").Output()
		fmt.Printf("  %s %s", n, mac)
	}
	fmt.Printf("\n$ curl http://%s:8090/   # a pod answers, through kube-proxy on the node that answered ARP\n", ip)
	for range 3 {
		_ = l.inClient(os.Stdout, "curl", "-s", "--max-time", "3", fmt.Sprintf("http://%s:8090/", ip))
	}
	fmt.Println("\n$ vtysh -c 'show ip route bgp'     # on the router: one next hop per node (ECMP)")
	vty := exec.Command("ip", "netns", "exec", prefix+"router", "vtysh", "--vty_socket", filepath.Join(dir, "frr"), "-c", "show ip route bgp")
	vty.Stdout, vty.Stderr = os.Stdout, os.Stderr
	_ = vty.Run()
	bgpIP, _ := exec.Command("ip", "netns", "exec", prefix+"client", l.kubectl, "--kubeconfig", l.kubeconfig(),
		"get", "svc", "nginx-bgp", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}").Output()
	fmt.Printf("\n$ curl http://%s:8090/   # through the router, to any node, to a pod\n", bgpIP)
	_ = l.inClient(os.Stdout, "curl", "-s", "--max-time", "3", fmt.Sprintf("http://%s:8090/", bgpIP))
	fmt.Printf(`
The lab's network lives in namespaces: run kubectl from the client namespace.
  alias kubectl='ip netns exec %[1]sclient %[2]s --kubeconfig %[3]s'
  kubectl get pods -A -o wide; kubectl get events -A; kubectl -n herald-system logs ds/herald-speaker
  kubectl herald status       # with bin/kubectl-herald on your PATH (make build)
  kubectl scale deploy nginx --replicas=5; kubectl create service loadbalancer web --tcp=8090:80
Watch failover: delete the speaker pod of the node that answered ARP, then arping and curl again
  kubectl -n herald-system get pods -o wide -l app.kubernetes.io/component=speaker
  kubectl -n herald-system delete pod herald-speaker-XXXXX                       # graceful
  kubectl -n herald-system delete pod herald-speaker-XXXXX --grace-period=0 --force  # a crash
  ip netns exec %[1]snodeN ip link set eth0 down                                  # the node is gone
Metrics:  ip netns exec %[1]snode1 curl -s 127.0.0.1:7473/metrics | grep ^herald_
Logs:     %[4]s (every component; pods' logs under nodes/*/pod-logs)
Kubernetes' own LoadBalancers specs, from %[1]srunner (%[5]s, behind the router):
  make conformance                                  # all 17, about 45 minutes
  make conformance FOCUS='cleanup finalizer'        # one
Tear it all down:  make lab-down
`, prefix, l.kubectl, l.kubeconfig(), dir, runnerIP)
	return nil
}

func (l *lab) status() error {
	if !l.running() {
		fmt.Println("The lab is not running (make lab starts it).")
		return nil
	}
	for _, r := range roles {
		out, _ := exec.Command("ip", "netns", "pids", prefix+r).Output()
		fmt.Printf("%-22s %d processes\n", prefix+r, len(strings.Fields(string(out))))
	}
	kc := []string{l.kubectl, "--kubeconfig", l.kubeconfig()}
	_ = l.inClient(os.Stdout, append(kc, "get", "nodes", "-o", "wide")...)
	_ = l.inClient(os.Stdout, append(kc, "get", "pods", "-A", "-o", "wide")...)
	return l.inClient(os.Stdout, append(kc, "get", "svc", "-A")...)
}

// down stops every process the lab started (containers and shims through the nodes'
// cgroups, the control plane through its pid files), unmounts what the nodes mounted,
// removes their cgroups and the lab's namespaces, and deletes the lab's directory.
func (l *lab) down() error {
	for _, n := range []string{"node1", "node2", "node3"} {
		cluster.TeardownNode(filepath.Join(dir, "nodes", n), "/"+prefix+n)
	}
	if err := k8stest.StopDetached(filepath.Join(dir, "control-plane")); err != nil {
		return err
	}
	for _, r := range roles {
		netlab.DeleteNS(prefix + r)
	}
	return os.RemoveAll(dir)
}

func nodeNSs(c *cluster.Cluster) []*netlab.NS {
	var out []*netlab.NS
	for _, n := range c.Nodes {
		out = append(out, n.NS)
	}
	return out
}

// labConfigMap is the lab's ConfigMap: config/samples' pools, with forwarding: none
// (this kernel has no ip_vs, so kube-proxy delivers) and relay-local (the owner of a
// Local Service's address hands the other nodes with a pod their share of new flows).
func labConfigMap(sample []byte) string {
	return strings.Replace(string(sample), "  config: |\n", "  config: |\n    forwarding: none\n    relay-local: true\n", 1)
}
