package k8s_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

// clients returns a clientset and a Core client of the shared test API server, and a
// new namespace there named from prefix.
func clients(t *testing.T, prefix string) (*kubernetes.Clientset, *k8s.Core, *corev1.Namespace) {
	t.Helper()
	cfg := k8stest.Shared(t).Config
	client := kubernetes.NewForConfigOrDie(cfg)
	core, err := k8s.NewCore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return client, core, ns
}

func TestGossipKey(t *testing.T) {
	client, core, ns := clients(t, "gossip-")
	ctx := context.Background()
	// A speaker that starts first waits for the key...
	got := make(chan []byte, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		key, err := k8s.WaitGossipKey(wctx, core, ns.Name, "memberlist", k8s.Waiter{Backoff: 100 * time.Millisecond})
		if err != nil {
			t.Error(err)
		}
		got <- key
	}()
	// ...which the controller creates once, and never replaces.
	created, err := k8s.EnsureGossipKey(ctx, core, ns.Name, "memberlist")
	if err != nil || !created {
		t.Fatalf("EnsureGossipKey = %v, %v; want created", created, err)
	}
	s, _ := client.CoreV1().Secrets(ns.Name).Get(ctx, "memberlist", metav1.GetOptions{})
	if len(s.Data[k8s.GossipKeyField]) != 32 {
		t.Fatalf("key of %d bytes", len(s.Data[k8s.GossipKeyField]))
	}
	if created, err := k8s.EnsureGossipKey(ctx, core, ns.Name, "memberlist"); err != nil || created {
		t.Fatalf("second EnsureGossipKey = %v, %v; want left alone", created, err)
	}
	again, _ := client.CoreV1().Secrets(ns.Name).Get(ctx, "memberlist", metav1.GetOptions{})
	if !bytes.Equal(again.Data[k8s.GossipKeyField], s.Data[k8s.GossipKeyField]) {
		t.Error("the key changed")
	}
	if key := <-got; !bytes.Equal(key, s.Data[k8s.GossipKeyField]) {
		t.Error("the waiting speaker read another key")
	}
	_ = client.CoreV1().Secrets(ns.Name).Delete(ctx, "memberlist", metav1.DeleteOptions{})
}
