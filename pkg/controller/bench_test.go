package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// BenchmarkServices2000 measures, on the real API server, the time from starting to
// create 2,000 LoadBalancer Services to all of them showing an address, against the
// floor: a plain client creating the same 2,000 Services and then writing their 2,000
// statuses, with as many goroutines as the controller has workers. Both run without a
// client-side rate limit. Run it with -benchtime 1x; it reports seconds and the ratio.
func BenchmarkServices2000(b *testing.B) {
	const n = 2000
	cp := k8stest.Shared(b)
	cfg := *cp.Config
	cfg.QPS = -1
	client := kubernetes.NewForConfigOrDie(&cfg)
	var herald, floor time.Duration
	for b.Loop() {
		// The controller.
		e := newEnv(b)
		e.client = client
		e.applyConfig("address-pools:\n- {name: p, protocol: layer2, addresses: [10.50.0.0/20]}\n")
		opts := e.options()
		c := e.start(opts)
		for c.Ready() != nil {
			time.Sleep(10 * time.Millisecond)
		}
		start := time.Now()
		done := watchAssigned(b, client, e.ns, n)
		createServices(b, client, e.ns, n)
		<-done
		herald = time.Since(start)
		c.stop()
		e.deleteAll()

		// The floor.
		f := newEnv(b)
		start = time.Now()
		svcs := createServices(b, client, f.ns, n)
		err := k8stest.Parallel(8, len(svcs), func(i int) error {
			s := svcs[i]
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: fmt.Sprintf("10.60.%d.%d", i/256, i%256)}}
			_, err := client.CoreV1().Services(f.ns).UpdateStatus(context.Background(), s, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		floor = time.Since(start)
		f.deleteAll()
	}
	b.ReportMetric(herald.Seconds(), "s-herald")
	b.ReportMetric(floor.Seconds(), "s-floor")
	b.ReportMetric(herald.Seconds()/floor.Seconds(), "herald/floor")
}

func createServices(b testing.TB, client kubernetes.Interface, ns string, n int) []*corev1.Service {
	out, err := k8stest.CreateServices(context.Background(), client, n, func(i int) *corev1.Service {
		return newService(ns, fmt.Sprintf("s-%04d", i))
	})
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// watchAssigned closes the returned channel once n Services in ns show an address.
func watchAssigned(b testing.TB, client kubernetes.Interface, ns string, n int) <-chan struct{} {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	w, err := client.CoreV1().Services(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer cancel()
		defer w.Stop()
		defer close(done)
		have := map[string]bool{}
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			if s, ok := ev.Object.(*corev1.Service); ok && len(s.Status.LoadBalancer.Ingress) > 0 {
				have[s.Name] = true
				if len(have) == n {
					return
				}
			}
		}
		b.Errorf("watch ended with %d of %d Services assigned", len(have), n)
	}()
	return done
}
