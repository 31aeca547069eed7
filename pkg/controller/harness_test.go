package controller

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/leaktest"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

// env is one test's corner of the shared API server: a namespace of its own that holds
// both its ConfigMap and its Services, watched by its controllers alone.
type env struct {
	t      testing.TB
	client kubernetes.Interface
	ns     string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	cp := k8stest.Shared(t)
	client := kubernetes.NewForConfigOrDie(cp.Config)
	ns, err := client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ctrl-" + strings.ToLower(t.Name()[4:min(len(t.Name()), 20)]) + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	e := &env{t: t, client: client, ns: ns.Name}
	t.Cleanup(e.deleteAll)
	return e
}

// deleteAll removes the test's objects (namespaces never finish deleting without
// kube-controller-manager).
func (e *env) deleteAll() {
	ctx := context.Background()
	if list, err := e.client.CoreV1().Services(e.ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, s := range list.Items {
			// The controllers have stopped: nobody else will remove their finalizer.
			if len(s.Finalizers) > 0 {
				_, _ = e.client.CoreV1().Services(e.ns).Patch(ctx, s.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			}
			_ = e.client.CoreV1().Services(e.ns).Delete(ctx, s.Name, metav1.DeleteOptions{})
		}
	}
	_ = e.client.CoreV1().ConfigMaps(e.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	_ = e.client.CoreV1().Events(e.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
}

// controller is one running controller of a test.
type controller struct {
	*Controller
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func (e *env) options() Options {
	return Options{
		Client: e.client, Config: k8s.ConfigRef{Namespace: e.ns}, WatchNamespace: e.ns,
		Logger: slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// start runs a controller until the test ends or stop is called.
func (e *env) start(opts Options) *controller {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	c, err := New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc := &controller{Controller: c, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- c.Run(ctx) }()
	e.t.Cleanup(rc.stop)
	return rc
}

func (c *controller) stop() {
	c.cancel()
	if err := <-c.done; err != nil {
		panic(fmt.Sprintf("controller Run: %v", err))
	}
	c.done <- nil // stop may be called again
}

type testWriter struct{ t testing.TB }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	if os.Getenv("HERALD_TEST_LOGS") != "" {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (e *env) applyConfig(text string) {
	e.t.Helper()
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "config"}, Data: map[string]string{"config": text}}
	_, err := e.client.CoreV1().ConfigMaps(e.ns).Update(ctx, cm, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = e.client.CoreV1().ConfigMaps(e.ns).Create(ctx, cm, metav1.CreateOptions{})
	}
	if err != nil {
		e.t.Fatalf("apply config: %v", err)
	}
}

type svcOpt func(*corev1.Service)

func withAnnotation(k, v string) svcOpt {
	return func(s *corev1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}

func withPorts(ports ...int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Ports = nil
		for _, p := range ports {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: fmt.Sprint("p", p), Port: p, TargetPort: intstr.FromInt32(p), Protocol: corev1.ProtocolTCP})
		}
	}
}

func withClass(c string) svcOpt { return func(s *corev1.Service) { s.Spec.LoadBalancerClass = &c } }

func withType(t corev1.ServiceType) svcOpt { return func(s *corev1.Service) { s.Spec.Type = t } }

func dualStack(p corev1.IPFamilyPolicy, fams ...corev1.IPFamily) svcOpt {
	return func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &p; s.Spec.IPFamilies = fams }
}

func newService(ns, name string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (e *env) create(name string, opts ...svcOpt) *corev1.Service {
	e.t.Helper()
	s, err := e.client.CoreV1().Services(e.ns).Create(context.Background(), newService(e.ns, name, opts...), metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create Service %s: %v", name, err)
	}
	return s
}

func (e *env) get(name string) *corev1.Service {
	e.t.Helper()
	s, err := e.client.CoreV1().Services(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get Service %s: %v", name, err)
	}
	return s
}

func ingressIPs(s *corev1.Service) []string {
	var out []string
	for _, in := range s.Status.LoadBalancer.Ingress {
		out = append(out, in.IP)
	}
	return out
}

// eventually polls cond every 50 ms for at most limit, and fails the test with what cond
// last said when it never holds.
func (e *env) eventually(limit time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("after %s: %s", limit, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitIPs waits until the Service's status shows exactly want.
func (e *env) waitIPs(name string, want ...string) {
	e.t.Helper()
	e.eventually(10*time.Second, func() (bool, string) {
		got := ingressIPs(e.get(name))
		return slices.Equal(got, want), fmt.Sprintf("Service %s has ingress %v, want %v", name, got, want)
	})
}

// events returns the Events with this reason recorded on the named object.
func (e *env) events(kind, name, reason string) []corev1.Event {
	e.t.Helper()
	list, err := e.client.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name + ",reason=" + reason,
	})
	if err != nil {
		e.t.Fatalf("list events: %v", err)
	}
	return list.Items
}

// waitEvent waits for an Event with reason on the object whose message contains substr.
func (e *env) waitEvent(kind, name, reason, substr string) corev1.Event {
	e.t.Helper()
	var found corev1.Event
	e.eventually(10*time.Second, func() (bool, string) {
		evs := e.events(kind, name, reason)
		for _, ev := range evs {
			if strings.Contains(ev.Message, substr) {
				found = ev
				return true, ""
			}
		}
		return false, fmt.Sprintf("no %s Event %s containing %q on %s (have %d with that reason)", kind, reason, substr, name, len(evs))
	})
	return found
}

// metric returns the value of the metric family name with the given labels.
func (c *controller) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// leakPkgs are the packages whose goroutines a component's Run starts and must end.
var leakPkgs = []string{
	"github.com/heraldlb/herald/pkg/controller.(*Controller)", "github.com/heraldlb/herald/pkg/k8s.",
	"k8s.io/client-go/tools/cache.", "k8s.io/client-go/util/workqueue.",
	"k8s.io/apimachinery/pkg/watch.",
}

// Run returns only once every goroutine it started (workers, informers, the Event
// broadcaster) has ended.
func TestRunLeavesNoGoroutine(t *testing.T) {
	e := newEnv(t)
	e.applyConfig("address-pools:\n- {name: a, protocol: layer2, addresses: [10.20.0.0/24]}\n")
	c := e.start(e.options())
	e.create("web")
	e.waitIPs("web", "10.20.0.0")
	c.stop()
	leaktest.Check(t, leakPkgs...)
}
