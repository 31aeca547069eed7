package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

// The plugin against a real API server holding what the lab holds: a configuration, three
// Ready nodes, Services with addresses (one Local, with its endpoint on node2), and one
// pending with the controller's Event.
func TestPlugin(t *testing.T) {
	cp := k8stest.Shared(t)
	client := kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plugin-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(client.CoreV1().ConfigMaps(ns.Name).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "config"}, Data: map[string]string{"config": `
address-pools:
- {name: default, protocol: layer2, addresses: [192.168.10.90-192.168.10.100]}
- {name: bgp, protocol: bgp, auto-assign: false, addresses: [198.51.100.0/24]}
peers:
- {peer-address: 192.168.10.1, peer-asn: 64500, my-asn: 64501}
`}}, metav1.CreateOptions{}))
	for _, n := range []string{"node1", "node2", "node3"} {
		node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns.Name + "-" + n}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
		must(client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}))
		t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{}) })
	}
	svc := func(name, ip string, mod func(*corev1.Service)) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: name}, Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}}}
		if mod != nil {
			mod(s)
		}
		s, err := client.CoreV1().Services(ns.Name).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ip != "" {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
			must(client.CoreV1().Services(ns.Name).UpdateStatus(ctx, s, metav1.UpdateOptions{}))
		}
	}
	svc("web", "192.168.10.90", nil)
	svc("routed", "198.51.100.1", nil)
	svc("local", "192.168.10.91", func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal })
	svc("pending", "", nil)
	node2 := ns.Name + "-node2"
	ready := true
	must(client.DiscoveryV1().EndpointSlices(ns.Name).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "local-1", Labels: map[string]string{discoveryv1.LabelServiceName: "local"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: &node2, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](8080)}},
	}, metav1.CreateOptions{}))
	// node3's speaker said its kernel has no IPVS.
	must(client.CoreV1().Events("default").Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "node3-"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: ns.Name + "-node3"},
		Type:           corev1.EventTypeWarning, Reason: "IPVSUnavailable", Message: "no ip_vs",
		Source: corev1.EventSource{Component: "herald-speaker"}, LastTimestamp: metav1.Now(),
	}, metav1.CreateOptions{}))
	must(client.CoreV1().Events(ns.Name).Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "pending-"},
		InvolvedObject: corev1.ObjectReference{Kind: "Service", Namespace: ns.Name, Name: "pending"},
		Type:           corev1.EventTypeWarning, Reason: "PoolExhausted", Message: `pool "default" has no free IPv4 address`,
		Source: corev1.EventSource{Component: "herald-controller"}, LastTimestamp: metav1.Now(),
	}, metav1.CreateOptions{}))

	herald := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		all := append([]string{"--kubeconfig", cp.Kubeconfig, "--config-namespace", ns.Name}, args...)
		if err := run(all, &out); err != nil {
			t.Fatalf("kubectl herald %s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}
	onlyNS := func(s string) string { // the shared API server may hold other tests' Services
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, ns.Name+"/") || strings.HasPrefix(l, "SERVICE") || strings.HasPrefix(l, "POOL") {
				keep = append(keep, strings.Join(strings.Fields(l), " "))
			}
		}
		return strings.Join(keep, "\n")
	}

	status := onlyNS(herald("status"))
	for _, want := range []string{
		ns.Name + "/local 192.168.10.91 default layer2 " + node2,
		ns.Name + "/routed 198.51.100.1 bgp bgp " + ns.Name + "-node1," + node2 + " (elected among Ready nodes) 192.168.10.1",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
	pools := strings.Join(strings.Fields(herald("pools")), " ")
	if !strings.Contains(pools, "default layer2 IPv4 11 2 9") || !strings.Contains(pools, "bgp bgp IPv4 256 1 255") {
		t.Errorf("pools:\n%s", pools)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(herald("-o", "json", "pools")), &rows); err != nil || len(rows) != 2 {
		t.Errorf("pools -o json: %v %v", rows, err)
	}

	explain := herald("explain", ns.Name+"/pending")
	if !strings.Contains(explain, "has no address yet") || !strings.Contains(explain, `(PoolExhausted): pool "default" has no free IPv4 address`) {
		t.Errorf("explain pending:\n%s", explain)
	}
	explain = herald("explain", ns.Name+"/local")
	if !strings.Contains(explain, "node "+node2+" announces 192.168.10.91") || !strings.Contains(explain, "no local endpoint") {
		t.Errorf("explain local:\n%s", explain)
	}
	if !strings.Contains(explain, "IPVS on node "+node2+": 192.168.10.91:80/TCP, scheduler rr, keeping the client's address, to 1 real servers: 10.244.1.5:8080") {
		t.Errorf("explain local does not say how IPVS forwards:\n%s", explain)
	}
	explain = herald("explain", ns.Name+"/routed")
	if !strings.Contains(explain, "node "+ns.Name+"-node3 does not announce 198.51.100.1 (bgp, pool bgp): cannot forward.") {
		t.Errorf("explain routed does not say node3 cannot forward:\n%s", explain)
	}

	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shrunk := write("shrunk.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config}\ndata:\n  config: |\n    address-pools:\n    - {name: default, protocol: layer2, addresses: [192.168.10.91-192.168.10.100]}\n    - {name: bgp, protocol: bgp, addresses: [198.51.100.0/24]}\n")
	var refusedOut bytes.Buffer
	if err := run([]string{"--kubeconfig", cp.Kubeconfig, "--config-namespace", ns.Name, "validate", shrunk}, &refusedOut); !errors.Is(err, errRefused) {
		t.Errorf("validate shrunk: %v, want the refusal (exit status 1)", err)
	}
	out := refusedOut.String()
	if !strings.Contains(onlyNS(out), ns.Name+"/web 192.168.10.90 default loses") || !strings.Contains(out, "would refuse") {
		t.Errorf("validate shrunk:\n%s", out)
	}
	renamed := write("renamed.yaml", "address-pools:\n- {name: lan, protocol: layer2, addresses: [192.168.10.0/24]}\n- {name: bgp, protocol: bgp, addresses: [198.51.100.0/24]}\nbfd-profiles:\n- {name: fast, echo-mode: true}\n")
	out = herald("validate", renamed)
	if !strings.Contains(onlyNS(out), ns.Name+"/web 192.168.10.90 default lan moves-pool") || !strings.Contains(out, "no Service loses") {
		t.Errorf("validate renamed:\n%s", out)
	}
	if !strings.Contains(out, "\nWarning: bfd-profiles[0].echo-mode (line 5): is ignored") {
		t.Errorf("validate renamed does not warn of echo-mode:\n%s", out)
	}
	var errOut bytes.Buffer
	bad := write("bad.yaml", "address-pools:\n- {name: x, protocol: layer3, addresses: [10.0.0.0/24]}\n")
	err = run([]string{"--kubeconfig", cp.Kubeconfig, "--config-namespace", ns.Name, "validate", bad}, &errOut)
	if err == nil || !strings.Contains(err.Error(), `address-pools[0].protocol (line 2): must be layer2 or bgp: "layer3"`) {
		t.Errorf("validate bad: %v", err)
	}
}

// Help and an offline validate need no cluster at all.
func TestWithoutCluster(t *testing.T) {
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	t.Setenv("HOME", t.TempDir())
	for _, args := range [][]string{{"help"}, {"--help"}, {"status", "--help"}} {
		var out bytes.Buffer
		if err := run(args, &out); err != nil && !errors.Is(err, flag.ErrHelp) {
			t.Errorf("kubectl herald %s: %v", strings.Join(args, " "), err)
		}
		if !strings.Contains(out.String(), "kubectl herald validate FILE") {
			t.Errorf("kubectl herald %s printed no help:\n%s", strings.Join(args, " "), out.String())
		}
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	_ = os.WriteFile(good, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config}\ndata:\n  config: |\n    address-pools:\n    - {name: a, protocol: layer2, addresses: [10.0.0.0/24]}\n"), 0o644)
	var out bytes.Buffer
	if err := run([]string{"validate", good}, &out); err != nil || !strings.Contains(out.String(), "valid: 1 address pools") || !strings.Contains(out.String(), "needs a cluster") {
		t.Errorf("offline validate of a good file: %v\n%s", err, out.String())
	}
	echo := filepath.Join(dir, "echo.yaml")
	_ = os.WriteFile(echo, []byte("bfd-profiles:\n- {name: fast, echo-mode: true}\naddress-pools:\n- {name: a, protocol: layer2, addresses: [10.0.0.0/24]}\n"), 0o644)
	out.Reset()
	if err := run([]string{"validate", echo}, &out); err != nil || !strings.Contains(out.String(), "valid: 1 address pools") ||
		!strings.Contains(out.String(), "\nWarning: bfd-profiles[0].echo-mode (line 2): is ignored: Herald runs BFD in asynchronous mode only") {
		t.Errorf("offline validate of a file with echo-mode: %v\n%s", err, out.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("address-pools:\n- {name: a, protocol: layer3, addresses: [10.0.0.0/24]}\n"), 0o644)
	if err := run([]string{"--offline", "validate", bad}, &out); err == nil || !strings.Contains(err.Error(), "address-pools[0].protocol (line 2)") {
		t.Errorf("offline validate of a bad file: %v", err)
	}
}
