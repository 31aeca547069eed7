package k8stest

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Parallel runs f(0), …, f(n-1) on workers goroutines and returns the first error; after
// an error no new call starts.
func Parallel(workers, n int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	next := make(chan int)
	stop := make(chan struct{})
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					once.Do(func() { first = err; close(stop) })
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-stop:
			break feed
		}
	}
	close(next)
	wg.Wait()
	return first
}

// CreateServices creates the n Services gen makes, 16 at a time, and returns them as
// created.
func CreateServices(ctx context.Context, client kubernetes.Interface, n int, gen func(i int) *corev1.Service) ([]*corev1.Service, error) {
	out := make([]*corev1.Service, n)
	err := Parallel(16, n, func(i int) error {
		s := gen(i)
		created, err := client.CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
		out[i] = created
		return err
	})
	return out, err
}
