package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

func kubectl(t *testing.T, kubeconfig string, args ...string) (string, error) {
	t.Helper()
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		t.Skipf("no kubectl: %v", err)
	}
	if kubeconfig != "" {
		args = append([]string{"--kubeconfig", kubeconfig}, args...)
	}
	out, err := exec.Command(filepath.Join(bin, "kubectl"), args...).CombinedOutput()
	return string(out), err
}

// The manifests render with kustomize, apply cleanly on a real API server, and grant no
// more than the components need.
func TestManifests(t *testing.T) {
	out, err := kubectl(t, "", "kustomize", "../config")
	if err != nil {
		t.Fatalf("kubectl kustomize config: %v\n%s", err, out)
	}
	for _, kind := range []string{"Namespace", "ServiceAccount", "ClusterRole", "Role", "Deployment", "DaemonSet", "Service", "ValidatingWebhookConfiguration"} {
		if !strings.Contains(out, "kind: "+kind+"\n") {
			t.Errorf("the rendered manifests have no %s", kind)
		}
	}
	checkPodSpecs(t, out)
	cp := k8stest.Shared(t)
	kc := cp.Kubeconfig
	if out, err := kubectl(t, kc, "apply", "-f", "../config/namespace.yaml"); err != nil {
		t.Fatalf("apply the namespace: %v\n%s", err, out)
	}
	if out, err := kubectl(t, kc, "apply", "--dry-run=server", "-k", "../config"); err != nil {
		t.Fatalf("apply --dry-run=server -k config: %v\n%s", err, out)
	}
	if out, err := kubectl(t, kc, "apply", "--dry-run=server", "-f", "../config/samples"); err != nil {
		t.Fatalf("apply --dry-run=server the samples: %v\n%s", err, out)
	}
	if out, err := kubectl(t, kc, "apply", "-k", "../config"); err != nil {
		t.Fatalf("apply -k config: %v\n%s", err, out)
	}
	sa := func(name string) string { return "--as=system:serviceaccount:herald-system:herald-" + name }
	for _, tc := range []struct {
		who  string
		args []string
		want bool
	}{
		{"controller", []string{"update", "services", "--subresource=status", "-n", "default"}, true},
		{"controller", []string{"patch", "services", "--subresource=status", "-n", "default"}, true}, // the cleanup finalizer
		{"controller", []string{"update", "services", "-n", "default"}, false},
		{"controller", []string{"patch", "services", "-n", "default"}, false},
		{"controller", []string{"delete", "services", "-n", "default"}, false},
		{"controller", []string{"create", "events", "-n", "default"}, true},
		{"controller", []string{"update", "leases.coordination.k8s.io", "-n", "herald-system"}, true},
		{"controller", []string{"get", "secrets/memberlist", "-n", "herald-system"}, true},
		{"controller", []string{"get", "secrets/other", "-n", "herald-system"}, false},
		{"controller", []string{"list", "secrets", "-n", "herald-system"}, false},
		{"controller", []string{"get", "secrets/memberlist", "-n", "default"}, false},
		{"speaker", []string{"list", "endpointslices.discovery.k8s.io", "-A"}, true},
		{"speaker", []string{"watch", "nodes"}, true},
		{"speaker", []string{"update", "nodes"}, false},
		{"speaker", []string{"update", "services", "--subresource=status", "-n", "default"}, false},
		{"speaker", []string{"create", "events", "-n", "default"}, true},
		{"speaker", []string{"get", "secrets/memberlist", "-n", "herald-system"}, true},
		{"speaker", []string{"get", "secrets/other", "-n", "herald-system"}, false},
		{"speaker", []string{"create", "secrets", "-n", "herald-system"}, false},
		{"speaker", []string{"update", "configmaps", "-n", "herald-system"}, false},
		{"controller", []string{"update", "configmaps/config-in-force", "-n", "herald-system"}, true},
		{"controller", []string{"update", "configmaps/config", "-n", "herald-system"}, false},
		{"controller", []string{"create", "configmaps", "-n", "herald-system"}, true},
		{"controller", []string{"create", "configmaps", "-n", "default"}, false},
		{"controller", []string{"get", "secrets/herald-webhook-cert", "-n", "herald-system"}, true},
		{"controller", []string{"update", "secrets/herald-webhook-cert", "-n", "herald-system"}, true},
		{"controller", []string{"update", "secrets/memberlist", "-n", "herald-system"}, false},
		{"controller", []string{"update", "validatingwebhookconfigurations.admissionregistration.k8s.io/herald-config"}, true},
		{"controller", []string{"update", "validatingwebhookconfigurations.admissionregistration.k8s.io/other"}, false},
		{"speaker", []string{"watch", "configmaps", "-n", "herald-system"}, true},
	} {
		out, _ := kubectl(t, kc, append([]string{"auth", "can-i", sa(tc.who)}, tc.args...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n") // warnings may come first
		answer := lines[len(lines)-1]
		if got := answer == "yes"; got != tc.want {
			t.Errorf("can the %s %s? %q, want %v", tc.who, strings.Join(tc.args, " "), answer, tc.want)
		}
	}
}

// checkPodSpecs checks the rendered workloads' scheduling and confinement: the speaker
// is node-critical (a node's announcements go with it), the controller cluster-critical,
// and both run under the runtime's default seccomp profile.
func checkPodSpecs(t *testing.T, rendered string) {
	t.Helper()
	specs := map[string]corev1.PodSpec{}
	for _, doc := range strings.Split(rendered, "\n---\n") {
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("a rendered manifest does not decode: %v\n%s", err, doc)
		}
		if obj.Kind == "DaemonSet" || obj.Kind == "Deployment" {
			specs[obj.Metadata.Name] = obj.Spec.Template.Spec
		}
	}
	for name, priority := range map[string]string{"herald-speaker": "system-node-critical", "herald-controller": "system-cluster-critical"} {
		spec, ok := specs[name]
		if !ok {
			t.Errorf("no workload %s in the rendered manifests", name)
			continue
		}
		if spec.PriorityClassName != priority {
			t.Errorf("%s: priorityClassName %q, want %q", name, spec.PriorityClassName, priority)
		}
		if sc := spec.SecurityContext; sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: the pod's seccompProfile is not RuntimeDefault", name)
		}
		for _, c := range spec.Containers {
			if sc := c.SecurityContext; sc != nil && sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("%s: container %s overrides the seccomp profile with %s", name, c.Name, sc.SeccompProfile.Type)
			}
			if sc := c.SecurityContext; sc == nil || sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s: container %s is privileged or has no securityContext", name, c.Name)
			}
		}
	}
}
