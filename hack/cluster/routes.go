package cluster

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/hack/netlab"
)

// RouteWatch follows the router's kernel routing table as zebra writes it, and keeps
// when each route last changed: the time a path reached (or left) the data plane.
type RouteWatch struct {
	mu      sync.Mutex
	routes  map[netip.Prefix]routeState
	changed chan struct{}
	done    chan struct{}
}

type routeState struct {
	hops []string // sorted next hops; nil once the route is gone
	at   time.Time
}

// WatchRoutes starts following the router's kernel routes; it stops when the test ends.
func (r *Router) WatchRoutes() *RouteWatch { return watchRoutes(r.c.t, r.NS) }

// WatchRoutes starts following BIRD's kernel routes (StartBIRDRouter); it stops when the
// test ends.
func (r *BIRD) WatchRoutes(t TB) *RouteWatch { return watchRoutes(t, r.NS) }

func watchRoutes(t TB, ns *netlab.NS) *RouteWatch {
	t.Helper()
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	w := &RouteWatch{routes: map[netip.Prefix]routeState{}, changed: make(chan struct{}, 1), done: make(chan struct{})}
	updates := make(chan netlink.RouteUpdate, 4096)
	if err := netlink.RouteSubscribeWithOptions(updates, w.done, netlink.RouteSubscribeOptions{Namespace: &h, ListExisting: true}); err != nil {
		h.Close()
		t.Fatalf("subscribe to the router's routes: %v", err)
	}
	h.Close()
	t.Cleanup(func() { close(w.done) })
	go func() {
		for u := range updates {
			w.take(u, time.Now())
		}
	}()
	return w
}

func (w *RouteWatch) take(u netlink.RouteUpdate, at time.Time) {
	if u.Dst == nil {
		return
	}
	prefix, ok := netipPrefix(u.Dst)
	if !ok {
		return
	}
	var hops []string
	if u.Type == unix.RTM_NEWROUTE {
		if u.Gw != nil {
			hops = append(hops, u.Gw.String())
		}
		for _, nh := range u.MultiPath {
			if nh.Gw != nil {
				hops = append(hops, nh.Gw.String())
			}
		}
		slices.Sort(hops)
		if hops == nil {
			hops = []string{}
		}
	}
	w.mu.Lock()
	w.routes[prefix] = routeState{hops: hops, at: at}
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// Wait waits, at most limit, until the kernel's route for prefix goes through exactly
// hops (none: the route is gone), and returns when the kernel made it so.
func (w *RouteWatch) Wait(t TB, prefix netip.Prefix, hops []string, limit time.Duration) time.Time {
	t.Helper()
	want := slices.Sorted(slices.Values(hops))
	deadline := time.After(limit)
	for {
		w.mu.Lock()
		st, ok := w.routes[prefix]
		w.mu.Unlock()
		if (len(want) == 0 && (!ok || st.hops == nil)) || (ok && st.hops != nil && slices.Equal(st.hops, want)) {
			if !ok {
				return time.Now()
			}
			return st.at
		}
		select {
		case <-w.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("the router's kernel routes %s via %v after %v, want %v", prefix, st.hops, limit, want)
			return time.Time{}
		}
	}
}
