package leader_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/k8s/leader"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

// The leader's work runs under Run's supervision: it has ended when Run
// returns, and the Lease is released only once it has, so a standby never starts while
// the old leader still writes. Run it with -race: the old implementation shared a flag
// between client-go's goroutine and the caller.
func TestRunSupervisesAndReleasesLast(t *testing.T) {
	client := kubernetes.NewForConfigOrDie(k8stest.Shared(t).Config)
	ns, err := client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "leader-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	timings := leader.Timings{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond}
	holder := func() string {
		l, err := client.CoordinationV1().Leases(ns.Name).Get(context.Background(), "lock", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	for round := range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		var working, finished atomic.Bool
		heldWhileFinishing := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- leader.Run(ctx, client, ns.Name, "lock", "me", timings, nil, func(ctx context.Context) error {
				working.Store(true)
				<-ctx.Done()
				time.Sleep(300 * time.Millisecond) // the workers finish their last writes
				heldWhileFinishing <- holder()
				finished.Store(true)
				return nil
			})
		}()
		for deadline := time.Now().Add(20 * time.Second); !working.Load(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: never led", round)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: Run: %v", round, err)
		}
		if !finished.Load() {
			t.Fatalf("round %d: Run returned while the leader's work still ran", round)
		}
		if h := <-heldWhileFinishing; h != "me" {
			t.Errorf("round %d: while the work finished, the Lease was held by %q: released too early", round, h)
		}
		if h := holder(); h != "" {
			t.Errorf("round %d: after Run returned the Lease is held by %q, want released", round, h)
		}
	}
	// Cancelled before ever leading: it returns, and nothing runs later.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var ran atomic.Bool
	if err := leader.Run(ctx, client, ns.Name, "lock", "me", timings, nil, func(context.Context) error { ran.Store(true); return nil }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if ran.Load() {
		t.Error("the leader's work started after Run returned")
	}
}
