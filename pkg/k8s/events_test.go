package k8s_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/leaktest"
)

// Events on the real API server: a repeat raises the first one's count, another message
// is another Event, a Node's Events land in default, and Shutdown has written what was
// recorded before it and leaves no goroutine.
func TestEvents(t *testing.T) {
	client, core, ns := clients(t, "events-")
	ctx := context.Background()
	svc, err := client.CoreV1().Services(ns.Name).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "events-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })

	ev := k8s.NewEvents(core, "herald-test")
	ev.Event(svc, corev1.EventTypeNormal, "Early", "before Start: dropped")
	ev.Start()
	for range 3 {
		ev.Event(svc, corev1.EventTypeNormal, k8s.ReasonAnnouncing, "node n1 announces 10.0.0.1")
	}
	ev.Eventf(svc, corev1.EventTypeWarning, k8s.ReasonNoNodeCanForward, "no node can forward %s", "10.0.0.1")
	ev.Event(svc, corev1.EventTypeNormal, "Long", strings.Repeat("x", 5000))
	ev.Event(node, corev1.EventTypeWarning, k8s.ReasonIPVSUnavailable, "node cannot forward")
	ev.Shutdown()
	ev.Event(svc, corev1.EventTypeNormal, "Late", "after Shutdown: dropped")
	leaktest.Check(t, "github.com/heraldlb/herald/pkg/k8s.(*Events)")

	list, err := client.CoreV1().Events(ns.Name).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]corev1.Event{}
	for _, e := range list.Items {
		got[e.Reason] = e
	}
	if len(got) != 3 || len(list.Items) != 3 {
		t.Fatalf("Events in %s: %d (%v), want Announcing, NoNodeCanForward and Long once each", ns.Name, len(list.Items), got)
	}
	a := got[k8s.ReasonAnnouncing]
	if a.Count != 3 || a.InvolvedObject.Kind != "Service" || a.InvolvedObject.Name != "web" || a.InvolvedObject.UID != svc.UID ||
		a.Source.Component != "herald-test" || a.Type != corev1.EventTypeNormal || a.LastTimestamp.Before(&a.FirstTimestamp) {
		t.Errorf("the repeated Event: %+v, want count 3 on Service web from herald-test", a)
	}
	if w := got[k8s.ReasonNoNodeCanForward]; w.Count != 1 || w.Message != "no node can forward 10.0.0.1" || w.Type != corev1.EventTypeWarning {
		t.Errorf("the warning: %+v", w)
	}
	if l := got["Long"]; len(l.Message) != 1024 || !strings.HasSuffix(l.Message, "...") {
		t.Errorf("a 5,000-byte message was written as %d bytes, want cut to the API's 1,024", len(l.Message))
	}
	nodeEvents, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + node.Name})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodeEvents.Items) != 1 || nodeEvents.Items[0].Reason != k8s.ReasonIPVSUnavailable {
		t.Errorf("Events on Node %s in default: %v, want one IPVSUnavailable", node.Name, nodeEvents.Items)
	}
}
