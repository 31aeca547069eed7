// Package leader runs a controller replica's work only while it holds a Lease. It is
// apart from package k8s because client-go's leader election links the typed clients
// of every API group, which the speaker must not carry.
package leader

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/heraldlb/herald/pkg/logging"
)

// Timings are the Lease timings: how long a lease lasts, how long the leader keeps
// trying to renew before it gives up, and how often candidates retry.
type Timings struct {
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// DefaultTimings are Kubernetes' own controllers' timings.
var DefaultTimings = Timings{LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second}

// Run runs run while this process holds the Lease namespace/name, and returns
// when ctx ends (nil) or when leadership is lost (an error: the caller should exit, as
// what run did may be stale). run is called on this goroutine and has returned before
// Run does; the Lease is released for the next replica only after run has
// returned, so two replicas never work at once.
func Run(ctx context.Context, client kubernetes.Interface, namespace, name, identity string, t Timings, logger *slog.Logger, run func(context.Context) error) error {
	logger = logging.OrDiscard(logger)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	started := make(chan context.Context, 1) // client-go calls OnStartedLeading in a goroutine of its own
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   t.LeaseDuration,
		RenewDeadline:   t.RenewDeadline,
		RetryPeriod:     t.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				select {
				case started <- lctx:
				default:
				}
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
	// The elector's context ends only when this function says so: on ctx's end before
	// leading, or after run has returned (which releases the Lease).
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		elector.Run(electCtx)
	}()
	var lctx context.Context
	select {
	case <-ctx.Done():
		stopElecting()
		<-elected
		return nil
	case <-elected:
		return fmt.Errorf("leader election on %s/%s ended before this replica led", namespace, name)
	case lctx = <-started:
	}
	logger.Info("became leader", "lease", namespace+"/"+name, "identity", identity)
	work, stopWork := context.WithCancel(ctx)
	defer stopWork()
	stop := context.AfterFunc(lctx, stopWork) // leadership lost: stop working
	runErr := run(work)
	stop()
	lost := lctx.Err() != nil && ctx.Err() == nil
	stopElecting() // releases the Lease: nothing works under it any more
	<-elected
	switch {
	case runErr != nil:
		return runErr
	case lost:
		return fmt.Errorf("lost the lease %s/%s", namespace, name)
	}
	return nil
}
