package e2e

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/inspect"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// kubectlApply applies a ConfigMap holding text as Herald's configuration, from the
// client's namespace, as an admin would; it returns kubectl's output and error.
func (c *Cluster) kubectlApply(t *testing.T, text string, flags ...string) (string, error) {
	t.Helper()
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  namespace: herald-system\n  name: config\ndata:\n  config: |\n")
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		b.WriteString("    " + l + "\n")
	}
	f := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{filepath.Join(bin, "kubectl"), "--kubeconfig", c.CP.Kubeconfig, "apply", "-f", f}, flags...)
	out, err := c.Client.Command(args...).CombinedOutput()
	return string(out), err
}

// speakersRun waits until every speaker runs the configuration text (by the hash in
// its metrics) and returns that hash.
func (c *Cluster) speakersRun(t *testing.T, text string, limit time.Duration) string {
	t.Helper()
	want := config.Hash([]byte(text))
	for deadline := time.Now().Add(limit); ; time.Sleep(100 * time.Millisecond) {
		agree := 0
		for _, n := range c.Nodes {
			if m, err := c.Metrics(n); err == nil && inspect.InForceHash(m) == want {
				agree++
			}
		}
		if agree == len(c.Nodes) {
			return want
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d speakers run configuration %s", agree, len(c.Nodes), want)
		}
	}
}

// configEvent waits for the controller's Event of reason on the ConfigMap, with a
// message containing msg.
func (c *Cluster) configEvent(t *testing.T, reason, msg string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		evs, err := c.Kube.CoreV1().Events("herald-system").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.kind=ConfigMap,reason=" + reason})
		if err == nil && slices.ContainsFunc(evs.Items, func(e corev1.Event) bool { return strings.Contains(e.Message, msg) }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event on the ConfigMap saying %q", reason, msg)
		}
	}
}

// A configuration the controller refuses changes nothing any speaker does: the webhook
// refuses it at kubectl apply, and an edit that bypasses the webhook is refused by the
// controller while the held address keeps answering ARP from the same node. A
// configuration that only removes an unused pool goes in force everywhere, moving nothing.
func TestRefusedConfigurationChangesNothing(t *testing.T) {
	const pools = "forwarding: none\naddress-pools:\n- name: web\n  protocol: layer2\n  addresses: [192.168.10.100-192.168.10.110]\n"
	const unused = "- name: spare\n  protocol: layer2\n  addresses: [192.168.10.140-192.168.10.150]\n"
	c := start(t, Options{Config: pools + unused, ControllerBin: controllerBin, Webhook: true})
	c.speakersRun(t, pools+unused, 20*time.Second)
	ip := c.CreateService("web", nil)[0]
	if ip != netip.MustParseAddr("192.168.10.100") {
		t.Fatalf("address %s", ip)
	}
	owner := c.owner(t, ip, 10*time.Second)
	stillOwner := func(step string) {
		t.Helper()
		for range 5 {
			if got := c.Owners(ip, 300*time.Millisecond); !slices.Equal(got, []string{owner.Name}) {
				t.Fatalf("%s: %s answered by %v, want %s alone", step, ip, got, owner.Name)
			}
		}
		if name, err := c.Connect(ip, 2*time.Second); err != nil || name != owner.Name {
			t.Fatalf("%s: %s reached %q (%v), want %s", step, ip, name, err, owner.Name)
		}
	}

	// At the door: the webhook answers with the controller's own words. It takes a
	// moment to have its certificate trusted, and until then the API server ignores it:
	// wait for it with server-side dry runs, which change nothing.
	broken := "address-pools:\n- name: web\n  protocol: layer3\n  addresses: [192.168.10.100-192.168.10.110]\n"
	steals := "forwarding: none\naddress-pools:\n- name: web\n  protocol: layer2\n  addresses: [192.168.10.120-192.168.10.130]\n"
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if _, err := c.kubectlApply(t, broken, "--dry-run=server"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook never refused a broken configuration")
		}
	}
	out, err := c.kubectlApply(t, broken)
	if err == nil || !strings.Contains(out, `address-pools[0].protocol (line 3): must be layer2 or bgp: "layer3"`) {
		t.Errorf("kubectl apply of a broken configuration: %v\n%s", err, out)
	}
	out, err = c.kubectlApply(t, steals)
	if err == nil || !strings.Contains(out, "192.168.10.100 (held by default/web)") {
		t.Errorf("kubectl apply of a configuration taking a held address: %v\n%s", err, out)
	}
	stillOwner("after two refusals at the door")

	// Behind the webhook's back (deleted, or a controller that was down): the controller
	// refuses, the speakers keep running what is in force.
	if err := c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), "herald-config", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	inForce := config.Hash([]byte(pools + unused))
	for _, bad := range []struct{ text, reason, msg string }{
		{broken, "InvalidConfig", `must be layer2 or bgp: "layer3"`},
		{steals, "ConfigRefused", "192.168.10.100 (held by default/web)"},
	} {
		c.SetConfig(bad.text)
		c.configEvent(t, bad.reason, bad.msg)
		time.Sleep(500 * time.Millisecond) // what a speaker would have done by now, it has
		for _, n := range c.Nodes {
			m, err := c.Metrics(n)
			if err != nil || inspect.InForceHash(m) != inForce {
				t.Errorf("after a %s edit %s runs %q (%v), want the configuration in force %s", bad.reason, n.Name, inspect.InForceHash(m), err, inForce)
			}
		}
		stillOwner("after a " + bad.reason + " edit")
	}
	snap, err := inspect.Read(context.Background(), c.Kube, k8s.ConfigRef{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.InForce != inForce || snap.Proposed != config.Hash([]byte(steals)) || !strings.Contains(snap.ProposedWhy, "ConfigRefused") {
		t.Errorf("kubectl herald status sees in force %s, proposed %s (%s); want %s in force and the refused one proposed", snap.InForce, snap.Proposed, snap.ProposedWhy, inForce)
	}

	// Removing only the unused pool is accepted; nothing moves.
	c.SetConfig(pools)
	c.speakersRun(t, pools, 15*time.Second)
	stillOwner("after the unused pool went")
	for _, n := range c.Nodes {
		if log, _ := os.ReadFile(filepath.Join(c.LogDir(), n.Name+"-speaker.log")); strings.Contains(string(log), "stopped announcing") {
			t.Errorf("%s stopped announcing something:\n%s", n.Name, lastLines(string(log), "stopped announcing", 3))
		}
	}
}

// On this machine's kernel (no ip_vs, no dummy link) a pool that forwards is announced by
// no node, each speaker says it cannot forward, and the Service says why; with
// forwarding: none every speaker serves it and says nothing about forwarding.
func TestNoIPVSNoAnnouncement(t *testing.T) {
	if os.Getenv("HERALD_IN_VM") != "" {
		t.Skip("the VM's kernel has ip_vs")
	}
	const forwards = "address-pools:\n- {name: web, protocol: layer2, addresses: [192.168.10.100-192.168.10.110]}\n"
	c := start(t, Options{Config: forwards})
	ip := c.CreateService("web", nil)[0]
	for _, n := range c.Nodes {
		m, err := c.Metrics(n)
		if err != nil || !strings.Contains(m, "herald_speaker_can_forward 0\n") {
			t.Errorf("%s does not say it cannot forward (%v)", n.Name, err)
		}
	}
	for range 5 {
		if got := c.Owners(ip, 400*time.Millisecond); len(got) != 0 {
			t.Fatalf("%s, of a pool that forwards, answered by %v on a kernel without IPVS", ip, got)
		}
	}
	ctx := context.Background()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		evs, _ := c.Kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=web,reason=NoNodeCanForward"})
		nodeEvs, _ := c.Kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,reason=IPVSUnavailable"})
		if len(evs.Items) == 1 && len(nodeEvs.Items) == len(c.Nodes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d NoNodeCanForward Events on the Service (want 1), %d IPVSUnavailable on Nodes (want %d)", len(evs.Items), len(nodeEvs.Items), len(c.Nodes))
		}
	}

	// With forwarding: none the address is served, and for 30 s no speaker says anything
	// about forwarding.
	mark := map[string]int{}
	for _, n := range c.Nodes {
		log, _ := os.ReadFile(filepath.Join(c.LogDir(), n.Name+"-speaker.log"))
		mark[n.Name] = len(log)
	}
	c.SetConfig("forwarding: none\n" + forwards)
	c.owner(t, ip, 10*time.Second)
	time.Sleep(30 * time.Second)
	for _, n := range c.Nodes {
		log, _ := os.ReadFile(filepath.Join(c.LogDir(), n.Name+"-speaker.log"))
		for _, l := range strings.Split(string(log[mark[n.Name]:]), "\n") {
			if (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) &&
				(strings.Contains(l, "forward") || strings.Contains(l, "herald0") || strings.Contains(l, "IPVS")) {
				t.Errorf("%s, with forwarding: none: %s", n.Name, l)
			}
		}
	}
}

// ndisc6, the IPv6 arping admins debug with, gets exactly the owner's answer: it accepts
// only an advertisement sent from the target address, as Linux sends it.
func TestNdisc6Answered(t *testing.T) {
	if _, err := exec.LookPath("ndisc6"); err != nil {
		t.Skip("needs ndisc6 (make deps)")
	}
	c := start(t, Options{})
	ips := c.CreateService("web", func(s *corev1.Service) {
		p := corev1.IPFamilyPolicySingleStack
		s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &p, []corev1.IPFamily{corev1.IPv6Protocol}
	})
	o := c.owner(t, ips[0], 10*time.Second)
	out, err := c.Client.Command("ndisc6", "-1", "-r", "3", "-w", "1000", ips[0].String(), "eth0").CombinedOutput()
	if err != nil || !strings.Contains(strings.ToUpper(string(out)), strings.ToUpper(o.MAC)) {
		t.Errorf("ndisc6 %s: %v\n%s\nwant the owner %s's MAC %s", ips[0], err, out, o.Name, o.MAC)
	}
	t.Logf("ndisc6: %s", strings.TrimSpace(string(out)))
}
