package e2e

import (
	"testing"
	"time"

	"github.com/heraldlb/herald/hack/netlab"
)

// kube brings up a real cluster (kubelets, containerd, kube-proxy) for a test.
func kube(t testing.TB, opts Options) *Cluster {
	t.Helper()
	netlab.Require(t)
	opts.Kubelets = true
	return Start(t, "", opts)
}

func TestKubeClusterUp(t *testing.T) {
	c := kube(t, Options{})
	out, err := c.Kubectl("get", "nodes", "-o", "wide")
	t.Logf("%v\n%s", err, out)
}

func TestKubeHeraldInstall(t *testing.T) {
	c := kube(t, Options{})
	out, err := c.Kubectl("apply", "-k", "../hack/lab/overlay")
	t.Logf("%v\n%s", err, out)
	c.SetConfig("forwarding: none\naddress-pools:\n- {name: default, protocol: layer2, addresses: [192.168.10.90-192.168.10.100]}\n")
	out, err = c.Kubectl("apply", "-f", "../hack/lab/demo.yaml", "-f", "../config/samples/service.yaml")
	t.Logf("%v\n%s", err, out)
	out, err = c.Kubectl("-n", "herald-system", "wait", "--for=condition=Ready", "pod", "--all", "--timeout=90s")
	t.Logf("%v\n%s", err, out)
	out, _ = c.Kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=nginx", "--timeout=60s")
	out, _ = c.Kubectl("get", "pods,svc", "-A", "-o", "wide")
	t.Logf("%s", out)
	ip := c.WaitAddresses("default", "nginx")
	o := c.owner(t, ip[0], 10*time.Second)
	for range 5 {
		who, err := c.Connect(ip[0], 2*time.Second)
		t.Logf("owner %s; curl: %q %v", o.Name, who, err)
	}
	if err != nil {
		out, _ = c.Kubectl("-n", "herald-system", "describe", "pods")
		t.Logf("%s", out)
		t.FailNow()
	}
}
