// Command lab brings up Herald's lab on this machine and tears it down.
//
//	go run ./hack/lab up      # start (or show, when already running); safe to repeat
//	go run ./hack/lab status  # what runs, and the Services
//	go run ./hack/lab down    # stop everything and remove what the lab made
//
// The lab is the end-to-end tests' topology (package e2e), left running: network
// namespaces on a bridge for a control plane (etcd and kube-apiserver built from their Go
// modules), three nodes each running a speaker and a stand-in web server, and a client;
// Herald's controller runs beside the API server. Everything lives in namespaces named
// herald-lab-* and in .lab/ (kubeconfig, and the logs of every component); nothing is
// added to this machine's own network namespace. It needs root.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/heraldlb/herald/hack/cluster"
	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

const prefix = "herald-lab-"

var roles = []string{"sw", "cp", "client", "router", "node1", "node2", "node3"}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "serve" {
		if err := cluster.Serve(os.Args[2]); err != nil { // the stand-in server on each node
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lab up|status|down")
		os.Exit(2)
	}
	l, err := newLab()
	if err == nil {
		switch os.Args[1] {
		case "up":
			err = l.up()
		case "status":
			err = l.status()
		case "down":
			err = l.down()
		default:
			err = fmt.Errorf("unknown command %q: want up, status or down", os.Args[1])
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

type lab struct {
	root, dir, bin, kubectl string
}

func newLab() (*lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab makes network namespaces: run it as root")
	}
	root, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return nil, errors.New("run the lab from the repository root (make lab)")
	}
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, ".lab")
	return &lab{root: root, dir: dir, bin: filepath.Join(dir, "bin"), kubectl: filepath.Join(bin, "kubectl")}, nil
}

func (l *lab) kubeconfig() string { return filepath.Join(l.dir, "control-plane", "kubeconfig") }

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

// labT lets the e2e harness run outside a test: a failure stops the bring-up, and
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
	step("building the speaker, the controller and the lab's stand-in server")
	for _, b := range []string{"./speaker", "./controller", "./hack/lab"} {
		if out, err := exec.Command("go", "build", "-o", l.bin+"/", b).CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b, err, out)
		}
	}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(failure)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s (logs in %s)", f.msg, l.dir)
		}
	}()
	step("network namespaces %s{sw,cp,client,node1..3} on one bridge; control plane; controller; speakers", prefix)
	c := cluster.Start(labT{}, filepath.Join(l.bin, "speaker"), cluster.Options{
		NamePrefix: prefix, Dir: l.dir, Detach: true,
		ControllerBin: filepath.Join(l.bin, "controller"),
		ServerCmd:     []string{filepath.Join(l.bin, "lab"), "serve"},
		NoConfig:      true, // the sample ConfigMap below is the lab's configuration
		Router:        func(nodes []*cluster.Node) string { return cluster.FRRConfig(nodes) },
	})
	step("applying config/samples: the address pools and two Services of type LoadBalancer, one on each pool")
	step("(with forwarding: none added: this kernel has no ip_vs, so kube-proxy's stand-in takes the traffic; IPVS forwarding is shown by make vm-test)")
	sample, err := os.ReadFile("config/samples/configmap.yaml")
	if err != nil {
		return err
	}
	cm := filepath.Join(l.dir, "configmap.yaml")
	text := strings.Replace(string(sample), "  config: |\n", "  config: |\n    forwarding: none\n", 1)
	if err := os.WriteFile(cm, []byte(text), 0o644); err != nil {
		return err
	}
	kc := []string{l.kubectl, "--kubeconfig", l.kubeconfig()}
	if err := l.inClient(os.Stdout, append(kc, "apply", "-f", cm,
		"-f", "config/samples/service.yaml", "-f", "config/samples/service-bgp.yaml")...); err != nil {
		return err
	}
	c.StandIn(c.WaitAddresses("default", "nginx"))
	bgpIPs := c.WaitAddresses("default", "nginx-bgp")
	c.StandIn(bgpIPs)
	step("waiting for the router to learn %s from every node", bgpIPs[0])
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if paths, err := c.Router.Paths(bgpIPs[0].String() + "/32"); err == nil && len(paths) == len(c.Nodes) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the router did not learn %s from every node in a minute (logs in %s)", bgpIPs[0], l.dir)
		}
	}
	// The client reaches the BGP pool through the router, which forwards by its BGP routes.
	c.Router.NS.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	c.Client.Run("ip", "route", "add", "198.51.100.0/24", "via", cluster.RouterIP4)
	fmt.Printf("\nThe lab is up (%.0fs).\n", time.Since(start).Seconds())
	return l.show()
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
	fmt.Println("\n$ kubectl get svc nginx")
	if err := l.inClient(os.Stdout, append(kc, "get", "svc", "nginx")...); err != nil {
		return err
	}
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
	fmt.Printf("\n$ curl http://%s:8090/   # the node that answered\n", ip)
	_ = l.inClient(os.Stdout, "curl", "-s", "--max-time", "3", fmt.Sprintf("http://%s:8090/", ip))

	fmt.Println("\n$ kubectl get svc nginx-bgp")
	_ = l.inClient(os.Stdout, append(kc, "get", "svc", "nginx-bgp")...)
	fmt.Println("\n$ vtysh -c 'show bgp ipv4 unicast'     # on the router: one path per node, all used (ECMP)")
	vty := exec.Command("ip", "netns", "exec", prefix+"router", "vtysh", "--vty_socket", filepath.Join(l.dir, "frr"), "-c", "show bgp ipv4 unicast")
	vty.Stdout, vty.Stderr = os.Stdout, os.Stderr
	_ = vty.Run()
	bgpIP, _ := exec.Command("ip", "netns", "exec", prefix+"client", l.kubectl, "--kubeconfig", l.kubeconfig(),
		"get", "svc", "nginx-bgp", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}").Output()
	fmt.Printf("\n$ curl http://%s:8090/   # through the router, to one of the nodes\n", bgpIP)
	_ = l.inClient(os.Stdout, "curl", "-s", "--max-time", "3", fmt.Sprintf("http://%s:8090/", bgpIP))
	fmt.Printf(`
The lab's network lives in namespaces: run kubectl from the client namespace.
  alias kubectl='ip netns exec %[1]sclient %[2]s --kubeconfig %[3]s'
  kubectl get svc -A; kubectl get events -A
  kubectl create service loadbalancer web --tcp=8090:8090         # the next address
Watch failover: kill the speaker of the node that answered, then arping and curl again
  ip netns pids %[1]snodeN      # the speaker and the stand-in server of nodeN
  pkill -f 'speaker.*--node-name nodeN'  (or -9 for a crash)
  ip netns exec %[1]snodeN ip link set eth0 down                   # cut a node off
Metrics:  ip netns exec %[1]snode1 curl -s 127.0.0.1:7473/metrics | grep ^herald_
Logs:     %[4]s
Tear it all down:  make lab-down
`, prefix, l.kubectl, l.kubeconfig(), l.dir)
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
	return l.inClient(os.Stdout, l.kubectl, "--kubeconfig", l.kubeconfig(), "get", "svc", "-A")
}

// down removes every lab namespace (ending every process in it) and .lab/.
func (l *lab) down() error {
	for _, r := range roles {
		netlab.DeleteNS(prefix + r)
	}
	return os.RemoveAll(l.dir)
}
