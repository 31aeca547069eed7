package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderTimings are the Lease timings: how long a lease lasts, how long the leader keeps
// trying to renew before it gives up, and how often candidates retry.
type LeaderTimings struct {
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// DefaultLeaderTimings are Kubernetes' own controllers' timings.
var DefaultLeaderTimings = LeaderTimings{LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second}

// RunAsLeader runs run while this process holds the Lease namespace/name, and returns
// when ctx ends (nil, the Lease released for the next replica) or when leadership is lost
// (an error: the caller should exit, as what run did may be stale).
func RunAsLeader(ctx context.Context, client kubernetes.Interface, namespace, name, identity string, t LeaderTimings, logger *slog.Logger, run func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var runErr error
	done := make(chan struct{})
	led := false
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   t.LeaseDuration,
		RenewDeadline:   t.RenewDeadline,
		RetryPeriod:     t.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				led = true
				logger.Info("became leader", "lease", namespace+"/"+name, "identity", identity)
				go func() {
					defer close(done)
					runErr = run(ctx)
					cancel() // run ended by itself: give the lease up
				}()
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(who string) {
				if who != identity {
					logger.Info("another replica leads", "lease", namespace+"/"+name, "leader", who)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election on %s/%s: %w", namespace, name, err)
	}
	elector.Run(runCtx)
	if !led {
		return nil
	}
	<-done
	if runErr != nil {
		return runErr
	}
	if ctx.Err() == nil && !elector.IsLeader() {
		return fmt.Errorf("lost the lease %s/%s", namespace, name)
	}
	return nil
}
