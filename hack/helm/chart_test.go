package helm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// object is a manifest parsed as JSON values, as the API server reads it.
type object = map[string]any

// helmLabels are the labels the chart adds that config/ does not: Helm's own.
var helmLabels = []string{"app.kubernetes.io/managed-by", "helm.sh/chart"}

// chart renders charts/herald with helm template and the arguments given, as Helm installs
// it: the objects, or helm's error.
func chart(t *testing.T, args ...string) ([]object, error) {
	t.Helper()
	bin, err := Binary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	root, err := k8stest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"template", Release, Chart(root), "--namespace", "default"}, args...)...)
	cmd.Env = append(os.Environ(), Env(t.TempDir())...)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("helm template: %w: %s", err, ee.Stderr)
		}
		return nil, err
	}
	return parse(t, "helm template", out), nil
}

// mustChart is chart that fails the test on helm's error.
func mustChart(t *testing.T, args ...string) []object {
	t.Helper()
	objs, err := chart(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// kustomize renders a kustomization of the repository with kubectl kustomize, as
// kubectl apply -k does.
func kustomize(t *testing.T, dir string) []object {
	t.Helper()
	bin, err := k8stest.Binaries(context.Background())
	if err != nil {
		t.Fatalf("kubectl (hack/build-control-plane.sh): %v", err)
	}
	root, err := k8stest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(bin, "kubectl"), "kustomize", filepath.Join(root, dir)).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	return parse(t, "kubectl kustomize "+dir, out)
}

// parse splits a YAML stream into objects, skipping empty documents.
func parse(t *testing.T, what string, stream []byte) []object {
	t.Helper()
	var objs []object
	for i, doc := range strings.Split("\n"+string(stream), "\n---") {
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("%s: document %d: %v\n%s", what, i, err, doc)
		}
		if len(o) > 0 {
			objs = append(objs, o)
		}
	}
	return objs
}

func parseFile(t *testing.T, path string) []object {
	t.Helper()
	root, err := k8stest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, path, b)
}

// key names an object: Kind namespace/name.
func key(o object) string {
	md, _ := o["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	if ns != "" {
		name = ns + "/" + name
	}
	return fmt.Sprintf("%s %s", o["kind"], name)
}

// normalise drops what Helm alone adds: its labels.
func normalise(objs []object) map[string]object {
	out := map[string]object{}
	for _, o := range objs {
		o = deepCopy(o)
		if md, ok := o["metadata"].(map[string]any); ok {
			if labels, ok := md["labels"].(map[string]any); ok {
				for _, l := range helmLabels {
					delete(labels, l)
				}
				if len(labels) == 0 {
					delete(md, "labels")
				}
			}
		}
		out[key(o)] = o
	}
	return out
}

func deepCopy(o object) object {
	b, _ := json.Marshal(o)
	var c object
	_ = json.Unmarshal(b, &c)
	return c
}

// compare reports, object by object, where the chart differs from config/.
func compare(t *testing.T, want, got []object) {
	t.Helper()
	w, g := normalise(want), normalise(got)
	keys := map[string]bool{}
	for k := range w {
		keys[k] = true
	}
	for k := range g {
		keys[k] = true
	}
	for _, k := range slicesSorted(keys) {
		wo, inW := w[k]
		gobj, inG := g[k]
		switch {
		case !inG:
			t.Errorf("%s is in config/ but not in the chart", k)
		case !inW:
			t.Errorf("%s is in the chart but not in config/", k)
		default:
			if d := cmp.Diff(wo, gobj); d != "" {
				t.Errorf("%s differs between config/ and the chart (-config/ +chart):\n%s", k, d)
			}
		}
	}
}

func slicesSorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// The chart with its default values installs what kubectl apply -k config installs:
// the same objects, field by field, but for Helm's own labels.
func TestChartMatchesConfig(t *testing.T) {
	compare(t, kustomize(t, "config"), mustChart(t))
}

// With the monitoring values on, the chart adds config/monitoring's PodMonitors, alerts
// and dashboard, labelled like the rest.
func TestChartMonitoringMatchesConfig(t *testing.T) {
	want := kustomize(t, "config")
	for _, f := range []string{"config/monitoring/podmonitors.yaml", "config/monitoring/prometheusrule.yaml"} {
		for _, o := range parseFile(t, f) {
			// config/monitoring is applied apart from the kustomization, without its label.
			md := o["metadata"].(map[string]any)
			md["labels"] = map[string]any{"app.kubernetes.io/part-of": "herald"}
			want = append(want, o)
		}
	}
	got := mustChart(t, "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true")
	compare(t, want, got)

	root, _ := k8stest.ModuleRoot()
	dashboard, err := os.ReadFile(filepath.Join(root, "config/monitoring/grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	got = mustChart(t, "--set", "metrics.grafanaDashboard.enabled=true")
	cm := find(t, got, "ConfigMap herald-system/herald-grafana-dashboard")
	var wantJSON, gotJSON any
	if err := json.Unmarshal(dashboard, &wantJSON); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(get(cm, "data", "herald.json").(string)), &gotJSON); err != nil {
		t.Fatalf("the chart's dashboard: %v", err)
	}
	if d := cmp.Diff(wantJSON, gotJSON); d != "" {
		t.Errorf("the chart's dashboard differs from config/monitoring/grafana-dashboard.json (-config +chart):\n%s", d)
	}
	if l := get(cm, "metadata", "labels", "grafana_dashboard"); l != "1" {
		t.Errorf("the dashboard's ConfigMap has label grafana_dashboard %v, want \"1\" (the sidecar's default)", l)
	}
}

// find returns the object named k (Kind namespace/name).
func find(t *testing.T, objs []object, k string) object {
	t.Helper()
	for _, o := range objs {
		if key(o) == k {
			return o
		}
	}
	var have []string
	for _, o := range objs {
		have = append(have, key(o))
	}
	t.Fatalf("no %s; the chart made %v", k, have)
	return nil
}

// get walks o by map keys and list indexes.
func get(o any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, _ := o.(map[string]any)
			o = m[p]
		case int:
			l, _ := o.([]any)
			if p >= len(l) {
				return nil
			}
			o = l[p]
		}
	}
	return o
}

// containers returns every container and init container of the chart's workloads, by
// "Kind/container".
func containers(objs []object) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, o := range objs {
		if o["kind"] != "Deployment" && o["kind"] != "DaemonSet" {
			continue
		}
		spec := get(o, "spec", "template", "spec")
		for _, field := range []string{"initContainers", "containers"} {
			l, _ := get(spec, field).([]any)
			for _, c := range l {
				c := c.(map[string]any)
				out[o["kind"].(string)+"/"+c["name"].(string)] = c
			}
		}
	}
	return out
}

func args(c map[string]any) []string {
	var out []string
	l, _ := c["args"].([]any)
	for _, a := range l {
		out = append(out, a.(string))
	}
	return out
}

// Each value lands where it should, and nowhere else.
func TestChartValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values string
		check  func(t *testing.T, objs []object)
	}{
		{"image", "image: {repository: registry.example/herald, tag: v1.2.3, digest: 'sha256:0123456789abcdef0123456789abcdef', pullPolicy: Always}\nimagePullSecrets: [{name: regcred}]", func(t *testing.T, objs []object) {
			cs := containers(objs)
			if len(cs) != 3 {
				t.Fatalf("containers %v, want the controller, the speaker and its init container", cs)
			}
			for name, c := range cs {
				if c["image"] != "registry.example/herald:v1.2.3@sha256:0123456789abcdef0123456789abcdef" || c["imagePullPolicy"] != "Always" {
					t.Errorf("%s: image %v, pull policy %v", name, c["image"], c["imagePullPolicy"])
				}
			}
			for _, w := range []string{"Deployment herald-system/herald-controller", "DaemonSet herald-system/herald-speaker"} {
				if s := get(find(t, objs, w), "spec", "template", "spec", "imagePullSecrets", 0, "name"); s != "regcred" {
					t.Errorf("%s: imagePullSecrets %v", w, s)
				}
			}
		}},
		{"config as text", "config: |\n  address-pools:\n  - name: default\n    protocol: layer2\n    addresses: [192.0.2.10-192.0.2.20]\n", func(t *testing.T, objs []object) {
			cm := find(t, objs, "ConfigMap herald-system/config")
			if got, want := get(cm, "data", "config"), "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10-192.0.2.20]\n"; got != want {
				t.Errorf("data.config %q, want %q", got, want)
			}
		}},
		{"config as a map", "config:\n  address-pools:\n  - name: default\n    protocol: layer2\n    addresses: [192.0.2.10-192.0.2.20]\n", func(t *testing.T, objs []object) {
			cm := find(t, objs, "ConfigMap herald-system/config")
			var got any
			if err := yaml.Unmarshal([]byte(get(cm, "data", "config").(string)), &got); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"address-pools": []any{map[string]any{"name": "default", "protocol": "layer2", "addresses": []any{"192.0.2.10-192.0.2.20"}}}}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("data.config (-want +got):\n%s", d)
			}
		}},
		{"load balancer class", "loadBalancerClass: example.com/lb", func(t *testing.T, objs []object) {
			for name, c := range containers(objs) {
				if name == "DaemonSet/prepare-forwarding" {
					continue
				}
				if !slices.Contains(args(c), "--load-balancer-class=example.com/lb") {
					t.Errorf("%s: args %v", name, args(c))
				}
			}
		}},
		{"placement and resources", `controller:
  nodeSelector: {node-role.kubernetes.io/control-plane: ""}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
  priorityClassName: system-cluster-critical
  resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 512Mi}}
  replicas: 3
speaker:
  nodeSelector: {herald.dev/speaker: "true"}
  tolerations: [{key: dedicated, operator: Equal, value: lb, effect: NoSchedule}]
  priorityClassName: system-node-critical
  resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {memory: 128Mi}}
  initResources: {limits: {memory: 32Mi}}
`, func(t *testing.T, objs []object) {
			ctl := find(t, objs, "Deployment herald-system/herald-controller")
			spk := find(t, objs, "DaemonSet herald-system/herald-speaker")
			for _, c := range []struct {
				got, want any
			}{
				{get(ctl, "spec", "replicas"), 3.0},
				{get(ctl, "spec", "template", "spec", "nodeSelector"), map[string]any{"node-role.kubernetes.io/control-plane": ""}},
				{get(ctl, "spec", "template", "spec", "tolerations"), []any{map[string]any{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}}},
				{get(ctl, "spec", "template", "spec", "priorityClassName"), "system-cluster-critical"},
				{get(ctl, "spec", "template", "spec", "containers", 0, "resources"), map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "128Mi"}, "limits": map[string]any{"memory": "512Mi"}}},
				{get(spk, "spec", "template", "spec", "nodeSelector"), map[string]any{"herald.dev/speaker": "true"}},
				{get(spk, "spec", "template", "spec", "tolerations"), []any{map[string]any{"key": "dedicated", "operator": "Equal", "value": "lb", "effect": "NoSchedule"}}},
				{get(spk, "spec", "template", "spec", "priorityClassName"), "system-node-critical"},
				{get(spk, "spec", "template", "spec", "containers", 0, "resources"), map[string]any{"requests": map[string]any{"cpu": "20m", "memory": "32Mi"}, "limits": map[string]any{"memory": "128Mi"}}},
				// Helm merges maps with the defaults: the init container keeps its requests.
				{get(spk, "spec", "template", "spec", "initContainers", 0, "resources"), map[string]any{"requests": map[string]any{"cpu": "10m", "memory": "16Mi"}, "limits": map[string]any{"memory": "32Mi"}}},
			} {
				if d := cmp.Diff(c.want, c.got); d != "" {
					t.Errorf("(-want +got):\n%s", d)
				}
			}
		}},
		{"metrics ports and extra flags", "metrics: {controllerPort: 9472, speakerPort: 9473}\nspeaker: {memberlistPort: 9946, extraArgs: [--log-level=debug]}\ncontroller: {extraArgs: [--workers=4]}", func(t *testing.T, objs []object) {
			cs := containers(objs)
			for _, c := range []struct {
				container string
				args      []string
				port      float64
			}{
				{"Deployment/controller", []string{"--metrics-addr=:9472", "--log-format=json", "--workers=4"}, 9472},
				{"DaemonSet/speaker", []string{"--metrics-addr=:9473", "--memberlist-port=9946", "--log-format=json", "--log-level=debug"}, 9473},
			} {
				if d := cmp.Diff(c.args, args(cs[c.container])); d != "" {
					t.Errorf("%s args (-want +got):\n%s", c.container, d)
				}
				if p := get(cs[c.container], "ports", 0); get(p, "name") != "metrics" || get(p, "containerPort") != c.port {
					t.Errorf("%s: first port %v, want metrics %v", c.container, p, c.port)
				}
			}
			if p := get(cs["DaemonSet/speaker"], "ports", 1, "containerPort"); p != 9946.0 {
				t.Errorf("memberlist port %v", p)
			}
		}},
		{"another namespace", "namespace: {name: lb-system}", func(t *testing.T, objs []object) {
			for _, o := range objs {
				if ns := get(o, "metadata", "namespace"); ns != nil && ns != "lb-system" {
					t.Errorf("%s is not in lb-system", key(o))
				}
			}
			find(t, objs, "Namespace lb-system")
			for _, b := range []string{"ClusterRoleBinding herald-controller", "ClusterRoleBinding herald-speaker"} {
				if ns := get(find(t, objs, b), "subjects", 0, "namespace"); ns != "lb-system" {
					t.Errorf("%s binds a service account in %v", b, ns)
				}
			}
			wh := find(t, objs, "ValidatingWebhookConfiguration herald-config")
			if ns := get(wh, "webhooks", 0, "clientConfig", "service", "namespace"); ns != "lb-system" {
				t.Errorf("the webhook calls a Service in %v", ns)
			}
			if ns := get(wh, "webhooks", 0, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"); ns != "lb-system" {
				t.Errorf("the webhook checks ConfigMaps in %v", ns)
			}
			cs := containers(objs)
			for _, c := range []string{"Deployment/controller", "DaemonSet/speaker"} {
				if !slices.Contains(args(cs[c]), "--config-namespace=lb-system") {
					t.Errorf("%s: args %v", c, args(cs[c]))
				}
			}
			if !slices.Contains(args(cs["Deployment/controller"]), "--webhook-dns-names=herald-controller-webhook.lb-system.svc") {
				t.Errorf("the controller's certificate is not for its Service: %v", args(cs["Deployment/controller"]))
			}
		}},
		{"a namespace of one's own", "namespace: {create: false}\ncontroller: {webhook: {failurePolicy: Fail, timeoutSeconds: 10}}", func(t *testing.T, objs []object) {
			for _, o := range objs {
				if o["kind"] == "Namespace" {
					t.Errorf("the chart makes %s", key(o))
				}
			}
			wh := find(t, objs, "ValidatingWebhookConfiguration herald-config")
			if p, s := get(wh, "webhooks", 0, "failurePolicy"), get(wh, "webhooks", 0, "timeoutSeconds"); p != "Fail" || s != 10.0 {
				t.Errorf("failurePolicy %v, timeoutSeconds %v", p, s)
			}
		}},
		{"monitoring labels", "metrics:\n  podMonitor: {enabled: true, interval: 15s, labels: {release: prom}}\n  prometheusRule: {enabled: true, labels: {release: prom}}", func(t *testing.T, objs []object) {
			for _, k := range []string{"PodMonitor herald-system/herald-controller", "PodMonitor herald-system/herald-speaker", "PrometheusRule herald-system/herald"} {
				o := find(t, objs, k)
				if l := get(o, "metadata", "labels", "release"); l != "prom" {
					t.Errorf("%s: label release %v", k, l)
				}
				if o["kind"] == "PodMonitor" && get(o, "spec", "podMetricsEndpoints", 0, "interval") != "15s" {
					t.Errorf("%s: %v", k, get(o, "spec", "podMetricsEndpoints"))
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := valuesFile(t, tc.values)
			tc.check(t, mustChart(t, "--values", f))
		})
	}
}

// Values that cannot work are refused before anything is installed, with an error that
// names the value.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		values string
		want   []string
	}{
		{"controller: {replicas: two}", []string{"/controller/replicas", "integer"}},
		{"speaker: {memberlistPort: 70000}", []string{"/speaker/memberlistPort", "65,535"}},
		{"metrics: {speakerPort: 0}", []string{"/metrics/speakerPort"}},
		{"controller: {webhook: {failurePolicy: Maybe}}", []string{"/controller/webhook/failurePolicy", "Ignore"}},
		{"loadBalancerClass: no-slash", []string{"/loadBalancerClass", "no-slash"}},
		{"namespace: {name: Herald_System}", []string{"/namespace/name", "Herald_System"}},
		{"image: {pullPolicy: Sometimes}", []string{"/image/pullPolicy"}},
		{"replicas: 3", []string{"replicas", "not allowed"}},
		{"speaker: {extraArgs: [debug]}", []string{"/speaker/extraArgs/0"}},
		{"config: 'address-pools: [name: x'", []string{"config is not YAML"}},
		{"config: [a, b]", []string{"/config"}},
	} {
		t.Run(tc.values, func(t *testing.T) {
			f := valuesFile(t, tc.values)
			_, err := chart(t, "--values", f)
			if err == nil {
				t.Fatalf("helm template accepted %s", tc.values)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// valuesFile writes a values file for --values. Not in t.TempDir(): helm splits --values
// at commas, which subtest names hold.
func valuesFile(t *testing.T, text string) string {
	t.Helper()
	d, err := os.MkdirTemp("", "herald-values-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	f := filepath.Join(d, "values.yaml")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// helm lint finds nothing wrong with the chart.
func TestChartLint(t *testing.T) {
	bin, err := Binary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	root, err := k8stest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "lint", "--strict", Chart(root))
	cmd.Env = append(os.Environ(), Env(t.TempDir())...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm lint --strict: %v\n%s", err, out)
	}
}
