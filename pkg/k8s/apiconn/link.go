package apiconn

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// LinkWatch replaces a Conns' connections after the kernel dropped their NAT state: when
// a link holding a global unicast address is set administratively down, or such an
// address is deleted (what makes the kernel flush the masquerade entries); see trigger. It replaces them as soon as the API server can be reached again: earlier,
// client-go's reconnection would fail on the missing route and back off for seconds.
// A link losing its carrier drops nothing, and is left alone.
//
// It needs no capability beyond reading netlink: it watches the namespace it was made in
// (the node's, for a host-network speaker) without ever entering another.
type LinkWatch struct {
	conns   *Conns
	log     *slog.Logger
	metrics *metrics.APIConns
	h       *netlink.Handle // in the namespace watched; closed by Run
	// Timings, injectable for tests; see the defaults below.
	retryEvery, tryLimit, giveUpAfter, minInterval, resubscribe time.Duration
}

// The defaults: the API server is tried every retryEvery, each try bounded by tryLimit,
// for at most giveUpAfter (then the health check is left to replace the connections);
// two replacements are at least minInterval apart; a subscription the kernel ended (a
// full socket buffer) is made again after resubscribe, doubling up to maxResubscribe.
const (
	retryEvery     = 200 * time.Millisecond
	tryLimit       = time.Second
	giveUpAfter    = 10 * time.Minute
	minInterval    = time.Second
	resubscribe    = time.Second
	maxResubscribe = 30 * time.Second
)

// NewLinkWatch watches the links of the calling thread's network namespace; Run must be
// called on a thread of the same namespace (any, in a process that never changes it).
// reg takes the metrics (herald_api_*); nil registers nowhere.
func NewLinkWatch(c *Conns, log *slog.Logger, reg prometheus.Registerer) (*LinkWatch, error) {
	m := metrics.NewAPIConns(metrics.OrPrivate(reg)) // herald_api_link_watch_up is 0 also when the watch cannot start
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("watch links: %w", err)
	}
	return &LinkWatch{
		conns: c, log: logging.OrDiscard(log), metrics: m, h: h,
		retryEvery: retryEvery, tryLimit: tryLimit, giveUpAfter: giveUpAfter, minInterval: minInterval, resubscribe: resubscribe,
	}, nil
}

// Run watches until ctx ends.
func (w *LinkWatch) Run(ctx context.Context) {
	defer w.h.Close()
	kick := make(chan reason, 1) // why the connections must go; pending kicks coalesce
	replaced := make(chan struct{})
	go func() { defer close(replaced); w.replacer(ctx, kick) }()
	defer func() { <-replaced }()
	t := newTrigger()
	wait := w.resubscribe
	for ctx.Err() == nil {
		start := time.Now()
		err := w.subscribe(ctx, t, kick)
		w.metrics.Watching.Set(0)
		if time.Since(start) > maxResubscribe {
			wait = w.resubscribe // a subscription that lasted is not a failing one
		}
		if err != nil {
			w.log.Warn("cannot watch links: API connections broken by a link going down are replaced only by the health check meanwhile", "err", err, "retryIn", wait)
		} else if ctx.Err() == nil {
			w.log.Warn("the kernel ended the link watch: watching again; a link that went down and up in between was missed", "retryIn", wait)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, maxResubscribe)
	}
}

// subscribe follows link and address updates until ctx ends or the kernel ends a
// subscription.
func (w *LinkWatch) subscribe(ctx context.Context, t *trigger, kick chan reason) error {
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	var drain []func()
	defer func() {
		close(done) // ends the subscriptions' goroutines, which then close their channels
		for _, d := range drain {
			d()
		}
	}()
	onErr := func(err error) { w.log.Debug("link watch", "err", err) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ListExisting: true, ErrorCallback: onErr}); err != nil {
		return err
	}
	drain = append(drain, func() {
		for range links {
		}
	})
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ListExisting: true, ErrorCallback: onErr}); err != nil {
		return err
	}
	drain = append(drain, func() {
		for range addrs {
		}
	})
	w.metrics.Watching.Set(1)
	signal := func(why reason) {
		select { // a pending kick stands for this one too
		case kick <- why:
		default:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-links:
			if !ok {
				return nil
			}
			if u.Family != unix.AF_UNSPEC { // a bridge port's message, not the link's own
				continue
			}
			a := u.Attrs()
			if u.Header.Type == unix.RTM_DELLINK {
				t.gone(a.Index)
				continue
			}
			adminUp := a.Flags&net.FlagUp != 0
			if t.link(a.Index, adminUp, u.Link.Type() == "dummy", func() bool { return holdsGlobal(w.addrsOf(u.Link)) }) {
				signal(reason{"link_down", a.Name})
			}
		case u, ok := <-addrs:
			if !ok {
				return nil
			}
			ip, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			if t.address(u.LinkIndex, ip.Unmap(), u.NewAddr, w.conns.From) {
				signal(reason{"address_deleted", ip.Unmap().String()})
			}
		}
	}
}

// reason says why the connections must go: the metric's label, and the link or address.
type reason struct{ why, what string }

// trigger remembers the links' administrative state and which of them held a global
// address: pure, so that its rules are tested without a kernel.
type trigger struct {
	up     map[int]bool // by link index, as last seen
	global map[int]bool // the link held a global unicast address (IPv6 ones go with the link)
	dummy  map[int]bool // the link is a dummy (kube-ipvs0, herald0): its addresses carry no traffic out
}

func newTrigger() *trigger {
	return &trigger{up: map[int]bool{}, global: map[int]bool{}, dummy: map[int]bool{}}
}

// link records a link's state and reports whether the connections must be replaced: it
// went administratively down (not merely lost its carrier) while holding a global
// unicast address, now (holds, asked only then) or earlier.
func (t *trigger) link(index int, adminUp, dummy bool, holds func() bool) bool {
	was, known := t.up[index]
	t.up[index], t.dummy[index] = adminUp, dummy
	return known && was && !adminUp && (t.global[index] || holds())
}

// address records an address added to or deleted from a link and reports whether the
// connections must be replaced: a deleted address that connections left from (from
// says), or a global one of a link that is not a dummy (the kernel matches the
// masqueraded address, which need not be the socket's).
func (t *trigger) address(index int, a netip.Addr, added bool, from func([]netip.Addr) bool) bool {
	if added {
		if a.IsGlobalUnicast() {
			t.global[index] = true
		}
		return false
	}
	return from([]netip.Addr{a}) || (a.IsGlobalUnicast() && !t.dummy[index])
}

// gone forgets a deleted link.
func (t *trigger) gone(index int) {
	delete(t.up, index)
	delete(t.global, index)
	delete(t.dummy, index)
}

// holdsGlobal reports whether addrs holds a global unicast address: a link a node's
// connections may leave from (not a pod's veth, not loopback).
func holdsGlobal(addrs []netip.Addr) bool {
	for _, a := range addrs {
		if a.IsGlobalUnicast() {
			return true
		}
	}
	return false
}

// addrsOf returns the addresses l holds now.
func (w *LinkWatch) addrsOf(l netlink.Link) []netip.Addr {
	list, err := w.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// replacer closes the connections, once the API server is reachable, after each kick
// (at most one replacement per minInterval), until ctx ends.
func (w *LinkWatch) replacer(ctx context.Context, kick <-chan reason) {
	for {
		var why reason
		select {
		case <-ctx.Done():
			return
		case why = <-kick:
		}
		took, ok := w.awaitReachable(ctx, kick)
		switch {
		case ok:
			w.log.Info("the kernel dropped the NAT state of the API connections: replacing them, the watches resume on new ones", "why", why.why, "of", why.what, "reachableAfter", took.Round(time.Millisecond))
			w.metrics.Replaced.WithLabelValues(why.why).Inc()
			w.conns.CloseAll()
		case ctx.Err() == nil:
			w.log.Warn("the API server is still unreachable: its connections are left to the health check", "why", why.why, "of", why.what, "after", took.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.minInterval):
		}
	}
}

// awaitReachable waits until the API server is reachable, at most giveUpAfter. Kicks
// that come meanwhile are taken before each try: a replacement after a successful try
// serves them too (one outage, one replacement, however many events it made), while a
// kick after that try asks for the next one.
func (w *LinkWatch) awaitReachable(ctx context.Context, kick <-chan reason) (time.Duration, bool) {
	start := time.Now()
	for {
		select {
		case <-kick:
		default:
		}
		if w.conns.Reachable(ctx, w.tryLimit) {
			return time.Since(start), true
		}
		if time.Since(start) > w.giveUpAfter {
			return time.Since(start), false
		}
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-time.After(w.retryEvery):
		}
	}
}
