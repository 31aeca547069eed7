package liveness

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/pkg/logging"
)

// LinkWatcher calls Up whenever a link of this network namespace comes up (it is up and
// its carrier is on), after being down: the node's connections may be stale, and the
// detector should dial its peers at once (Detector.Redial) rather than wait for TCP's
// retransmissions.
type LinkWatcher struct {
	Up     func()
	Logger *slog.Logger
	// Namespace, when set, is the network namespace watched; nil: the process's own.
	Namespace *netns.NsHandle
}

// Run subscribes to the kernel's link changes until ctx ends.
func (w *LinkWatcher) Run(ctx context.Context) error {
	log := logging.OrDiscard(w.Logger)
	ch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	failed := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ListExisting: true,
		Namespace:    w.Namespace,
		ErrorCallback: func(err error) {
			select {
			case failed <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("liveness: subscribe to link changes: %w", err)
	}
	running := links{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			// The subscription may have lost messages (a full socket buffer): not fatal,
			// the detector's own redialling remains.
			log.Warn("link subscription", "err", err)
		case u, ok := <-ch:
			if !ok {
				return fmt.Errorf("liveness: link subscription ended")
			}
			if running.cameUp(u) {
				log.Debug("link up: dialling the peers not heard lately", "interface", u.Link.Attrs().Name)
				w.Up()
			}
		}
	}
}

// links remembers, by interface index, whether each link was up with its carrier on.
type links map[int32]bool

// cameUp records u and says whether it brings a known link up after being down. Loopback
// and dummy links are left out: no peer is reached through them (the forwarder's
// herald0 is a dummy link).
func (l links) cameUp(u netlink.LinkUpdate) bool {
	if u.Link == nil {
		return false
	}
	attrs := u.Link.Attrs()
	if attrs == nil || attrs.Flags&net.FlagLoopback != 0 || u.Link.Type() == "dummy" {
		return false
	}
	if u.Header.Type == unix.RTM_DELLINK {
		delete(l, u.Index)
		return false
	}
	up := attrs.Flags&net.FlagUp != 0 && attrs.RawFlags&unix.IFF_RUNNING != 0 // carrier on
	was, known := l[u.Index]
	l[u.Index] = up
	return up && known && !was
}
