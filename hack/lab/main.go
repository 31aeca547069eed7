// Command lab brings up Herald's lab on this machine and tears it down.
//
//	go run ./hack/lab up      # start (or show, when already running), idempotent
//	go run ./hack/lab status  # what runs, and the Services
//	go run ./hack/lab down    # stop everything and remove .lab/
//
// The lab is a real control plane (etcd and kube-apiserver built from their Go modules,
// on loopback) with Herald's controller, the sample ConfigMap and an nginx Service of
// type LoadBalancer. Everything it makes lives in .lab/ at the repository root: the
// kubeconfig, and the logs of every component in .lab/logs.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lab up|status|down")
		os.Exit(2)
	}
	l, err := newLab()
	if err == nil {
		switch os.Args[1] {
		case "up":
			err = l.up(context.Background())
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
	root, dir, logs, kubeconfig, kubectlBin string
}

func newLab() (*lab, error) {
	root, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return nil, errors.New("run the lab from the repository root (make lab)")
	}
	dir := filepath.Join(root, ".lab")
	return &lab{root: root, dir: dir, logs: filepath.Join(dir, "logs"), kubeconfig: filepath.Join(dir, "kubeconfig")}, nil
}

func (l *lab) up(ctx context.Context) error {
	bin, err := k8stest.Binaries(ctx)
	if err != nil {
		return err
	}
	l.kubectlBin = filepath.Join(bin, "kubectl")
	if l.running() {
		fmt.Println("The lab is already running.")
		return l.show()
	}
	if err := l.down(); err != nil { // leftovers of a lab that died
		return err
	}
	start := time.Now()
	for _, d := range []string{l.logs, filepath.Join(l.dir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	step("starting the control plane (etcd, kube-apiserver)")
	cp, err := k8stest.Start(ctx, k8stest.Options{Dir: l.logs, BinDir: bin, Detach: true})
	if err != nil {
		return err
	}
	if err := os.Rename(cp.Kubeconfig, l.kubeconfig); err != nil {
		return err
	}

	step("building and starting Herald's controller")
	ctrl := filepath.Join(l.dir, "bin", "controller")
	if out, err := exec.Command("go", "build", "-o", ctrl, "./controller").CombinedOutput(); err != nil {
		return fmt.Errorf("build the controller: %v\n%s", err, out)
	}
	if err := l.kubectl("apply", "-f", "config/namespace.yaml"); err != nil {
		return err
	}
	if err := l.daemon("controller", ctrl, "--kubeconfig", l.kubeconfig, "--metrics-addr", "127.0.0.1:7472", "--log-format", "text"); err != nil {
		return err
	}

	step("applying the address pools (config/samples/configmap.yaml) and an nginx Service of type LoadBalancer")
	if err := l.kubectl("apply", "-f", "config/samples/configmap.yaml", "-f", "config/samples/service.yaml"); err != nil {
		return err
	}
	if err := l.waitExternalIP(30 * time.Second); err != nil {
		return err
	}
	fmt.Printf("\nThe lab is up (%.1fs).\n", time.Since(start).Seconds())
	return l.show()
}

func (l *lab) show() error {
	fmt.Println("\n$ kubectl get svc nginx")
	if err := l.kubectl("get", "svc", "nginx"); err != nil {
		return err
	}
	fmt.Println("\n$ kubectl get events --field-selector involvedObject.name=nginx")
	_ = l.kubectl("get", "events", "--field-selector", "involvedObject.name=nginx")
	fmt.Printf(`
Use kubectl against the lab:
  export KUBECONFIG=%s
  alias kubectl=%s
  kubectl create service loadbalancer web --tcp=80:8080    # gets the next address
  kubectl -n herald-system edit configmap config           # a broken config is refused, see the Events
Metrics:  curl -s 127.0.0.1:7472/metrics | grep ^herald_
Logs:     %s
Tear it all down:  make lab-down
`, l.kubeconfig, l.kubectlBin, l.logs)
	return nil
}

func (l *lab) status() error {
	if !l.running() {
		fmt.Println("The lab is not running (make lab starts it).")
		return nil
	}
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		return err
	}
	l.kubectlBin = filepath.Join(bin, "kubectl")
	pids, _ := filepath.Glob(filepath.Join(l.logs, "*.pid"))
	for _, p := range pids {
		data, _ := os.ReadFile(p)
		fmt.Printf("%-16s pid %s\n", strings.TrimSuffix(filepath.Base(p), ".pid"), strings.TrimSpace(string(data)))
	}
	return l.kubectl("get", "svc", "-A")
}

func (l *lab) down() error {
	if err := k8stest.StopDetached(l.logs); err != nil {
		return err
	}
	return os.RemoveAll(l.dir)
}

// running reports whether every process of a lab is alive.
func (l *lab) running() bool {
	pids, _ := filepath.Glob(filepath.Join(l.logs, "*.pid"))
	if len(pids) < 3 {
		return false
	}
	for _, p := range pids {
		data, err := os.ReadFile(p)
		if err != nil {
			return false
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || syscall.Kill(pid, 0) != nil {
			return false
		}
	}
	return true
}

// daemon starts a process that outlives the lab command, logging to logs/NAME.log.
func (l *lab) daemon(name string, argv ...string) error {
	logf, err := os.Create(filepath.Join(l.logs, name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return os.WriteFile(filepath.Join(l.logs, name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

func (l *lab) kubectl(args ...string) error {
	cmd := exec.Command(l.kubectlBin, append([]string{"--kubeconfig", l.kubeconfig}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (l *lab) waitExternalIP(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		out, _ := exec.Command(l.kubectlBin, "--kubeconfig", l.kubeconfig, "get", "svc", "nginx",
			"-o", "jsonpath={.status.loadBalancer.ingress[*].ip}").Output()
		if len(strings.TrimSpace(string(out))) > 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the nginx Service has no EXTERNAL-IP after %s; see %s/controller.log", limit, l.logs)
}

func step(s string) { fmt.Println("==>", s) }
