package helm

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

// helm install, upgrade and uninstall of the chart against a real API server (no
// kubelets: the pods never run, the objects are real). An upgrade keeps the webhook's
// caBundle, which the controller writes and the chart never sets; uninstall removes what
// the release made.
func TestChartInstallUpgradeUninstall(t *testing.T) {
	cp := k8stest.Shared(t)
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	bin, err := Binary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	root, err := k8stest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
		cmd.Env = append(os.Environ(), Env(home)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	values := valuesFile(t, "config: |\n  address-pools:\n  - name: default\n    protocol: layer2\n    addresses: [192.0.2.10-192.0.2.20]\n")
	run(InstallArgs(Chart(root), values)...)
	t.Cleanup(func() {
		cmd := exec.Command(bin, append([]string{"--kubeconfig", cp.Kubeconfig}, UninstallArgs()...)...)
		cmd.Env = append(os.Environ(), Env(home)...)
		_ = cmd.Run() // already gone when the test passed
	})

	cm, err := kube.CoreV1().ConfigMaps("herald-system").Get(ctx, "config", metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data["config"], "192.0.2.10-192.0.2.20") {
		t.Fatalf("ConfigMap herald-system/config: %v %v", cm, err)
	}
	ns, err := kube.CoreV1().Namespaces().Get(ctx, "herald-system", metav1.GetOptions{})
	if err != nil || ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Fatalf("Namespace herald-system: %v %v", ns, err)
	}
	// The controller writes the webhook's caBundle.
	vwc, err := kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "herald-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vwc.Webhooks[0].ClientConfig.CABundle = []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	if _, err := kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, vwc, metav1.UpdateOptions{FieldManager: "herald-controller"}); err != nil {
		t.Fatal(err)
	}

	run(append(InstallArgs(Chart(root), values), "--set", "loadBalancerClass=example.com/lb")...)
	dep, err := kube.AppsV1().Deployments("herald-system").Get(ctx, "herald-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if args := dep.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--load-balancer-class=example.com/lb") {
		t.Errorf("after the upgrade the controller runs with %v", args)
	}
	vwc, err = kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "herald-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(vwc.Webhooks[0].ClientConfig.CABundle) == 0 {
		t.Error("helm upgrade removed the caBundle the controller wrote: the webhook fails until the controller writes it again")
	}
	if out := run("list", "--namespace", "default", "--short"); strings.TrimSpace(out) != Release {
		t.Errorf("helm list: %q", out)
	}

	run(UninstallArgs()...)
	// Without a controller manager here, the namespace stays Terminating: it must at
	// least be going, and every cluster-wide object gone.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ns, err := kube.CoreV1().Namespaces().Get(ctx, "herald-system", metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && ns.DeletionTimestamp != nil) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Namespace herald-system not deleted after helm uninstall: %v", err)
		}
	}
	for what, get := range map[string]func() error{
		"ClusterRole herald-controller": func() error {
			_, err := kube.RbacV1().ClusterRoles().Get(ctx, "herald-controller", metav1.GetOptions{})
			return err
		},
		"ClusterRoleBinding herald-speaker": func() error {
			_, err := kube.RbacV1().ClusterRoleBindings().Get(ctx, "herald-speaker", metav1.GetOptions{})
			return err
		},
		"ValidatingWebhookConfiguration herald-config": func() error {
			_, err := kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "herald-config", metav1.GetOptions{})
			return err
		},
	} {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("%s after helm uninstall: %v", what, err)
		}
	}
	if out := run("list", "--all-namespaces", "--deployed", "--failed", "--pending", "--uninstalling", "--short"); strings.TrimSpace(out) != "" {
		t.Errorf("helm list after uninstall: %q", out)
	}
}
