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
// a link that holds a global unicast address, or that a route with a gateway leaves by
// (an unnumbered uplink), is set administratively down, or a global address is deleted
// (what makes the kernel flush the masquerade entries); see trigger. The connections
// open at the event are retired then, and closed as soon as the API server can be
// reached again: earlier, client-go's reconnection would fail on the missing route and
// back off for seconds; connections opened after the event are healthy and stay. A link
// losing its carrier drops nothing, and is left alone.
//
// It needs no capability beyond reading netlink (CAP_NET_ADMIN, where it has it, sizes
// its socket buffers): it watches the namespace it was made in (the node's, for a
// host-network speaker) without ever entering another.
type LinkWatch struct {
	conns   *Conns
	log     *slog.Logger
	metrics *metrics.APIConns
	force   bool // the subscriptions' buffers can be forced past rmem_max (CAP_NET_ADMIN)
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
	resubscribe    = 100 * time.Millisecond
	maxResubscribe = 30 * time.Second
)

// rcvBuf is each subscription's socket buffer: a node's pods coming and going make
// bursts of link and route messages, and a full buffer ends the subscription.
const rcvBuf = 1 << 20

// endGrace is how long the messages the other subscriptions hold are still read after
// the kernel ended one.
const endGrace = 100 * time.Millisecond

// NewLinkWatch watches the links of the calling thread's network namespace; Run must be
// called on a thread of the same namespace (any, in a process that never changes it).
// reg takes the metrics (herald_api_*); nil registers nowhere.
func NewLinkWatch(c *Conns, log *slog.Logger, reg prometheus.Registerer) (*LinkWatch, error) {
	m := metrics.NewAPIConns(metrics.OrPrivate(reg)) // herald_api_link_watch_up is 0 also when the watch cannot start
	// Netlink can be used here, and the buffers can be forced or not: found once, and
	// said at start rather than on every subscription.
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("watch links: netlink socket: %w", err)
	}
	force := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) == nil
	unix.Close(fd)
	log = logging.OrDiscard(log)
	if !force {
		log.Warn("link watch: cannot force its socket buffers (no CAP_NET_ADMIN): capped at net.core.rmem_max, a burst of link or route messages can end a subscription")
	}
	return &LinkWatch{
		conns: c, log: log, metrics: m, force: force,
		retryEvery: retryEvery, tryLimit: tryLimit, giveUpAfter: giveUpAfter, minInterval: minInterval, resubscribe: resubscribe,
	}, nil
}

// Run watches until ctx ends.
func (w *LinkWatch) Run(ctx context.Context) {
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

// subscribe follows link, address and route updates until ctx ends or the kernel ends a
// subscription.
func (w *LinkWatch) subscribe(ctx context.Context, t *trigger, kick chan reason) error {
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	var drain []func()
	defer func() {
		close(done) // ends the subscriptions' goroutines, which then close their channels
		for _, d := range drain {
			d()
		}
	}()
	onErr := func(err error) { w.log.Debug("link watch", "err", err) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ListExisting: true, ErrorCallback: onErr, ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: w.force}); err != nil {
		return err
	}
	drain = append(drain, func() { empty(links) })
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ListExisting: true, ErrorCallback: onErr, ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: w.force}); err != nil {
		return err
	}
	drain = append(drain, func() { empty(addrs) })
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ListExisting: true, ErrorCallback: onErr, ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: w.force}); err != nil {
		return err
	}
	drain = append(drain, func() { empty(routes) })
	w.metrics.Watching.Set(1)
	signal := func(why reason) {
		w.conns.Retire() // now, not when the replacer gets to it: what opens later is healthy
		select {         // a pending kick stands for this one too
		case kick <- why:
		default:
		}
	}
	// When the kernel ends one subscription (a full buffer), what the others hold already
	// is still read, for at most endGrace: a link-down message among them is not lost.
	lc, ac, rc := links, addrs, routes
	var ending <-chan time.Time
	end := func() {
		if ending == nil {
			ending = time.After(endGrace)
		}
	}
	for lc != nil || ac != nil || rc != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-ending:
			return nil
		case u, ok := <-lc:
			if !ok {
				lc = nil
				end()
				continue
			}
			if u.Family != unix.AF_UNSPEC { // a bridge port's message, not the link's own
				continue
			}
			a := u.Attrs()
			if u.Header.Type == unix.RTM_DELLINK {
				t.gone(a.Index)
				continue
			}
			if t.link(a.Index, a.Flags&net.FlagUp != 0, u.Link.Type() == "dummy") {
				signal(reason{"link_down", a.Name})
			}
		case u, ok := <-rc:
			if !ok {
				rc = nil
				end()
				continue
			}
			if u.Type == unix.RTM_NEWROUTE {
				for _, index := range gatewayLinks(u.Route) {
					t.gateway(index)
				}
			}
		case u, ok := <-ac:
			if !ok {
				ac = nil
				end()
				continue
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
	return nil
}

// empty reads ch until its sender closes it.
func empty[T any](ch <-chan T) {
	for range ch {
	}
}

// reason says why the connections must go: the metric's label, and the link or address.
type reason struct{ why, what string }

// trigger remembers the links' administrative state and which of them carry traffic
// out of the node: pure, so that its rules are tested without a kernel.
type trigger struct {
	up      map[int]bool // by link index, as last seen
	carries map[int]bool // the link held a global unicast address (IPv6 ones go with the link) or a route with a gateway
	dummy   map[int]bool // the link is a dummy (kube-ipvs0, herald0): nothing leaves by it
}

func newTrigger() *trigger {
	return &trigger{up: map[int]bool{}, carries: map[int]bool{}, dummy: map[int]bool{}}
}

// link records a link's state and reports whether the connections must be replaced: a
// link that is not a dummy went administratively down (not merely lost its carrier)
// after it held a global unicast address or a route with a gateway. What it held is
// remembered, not asked when it goes down: the kernel deletes its IPv6 addresses and
// its routes with it, and says nothing of the IPv4 routes.
func (t *trigger) link(index int, adminUp, dummy bool) bool {
	was, known := t.up[index]
	t.up[index], t.dummy[index] = adminUp, dummy
	return known && was && !adminUp && !dummy && t.carries[index]
}

// gateway records that a route with a gateway leaves by the link: an uplink, even one
// with no address of its own (the kernel then masquerades with another link's address,
// and still drops that state when this link goes down).
func (t *trigger) gateway(index int) { t.carries[index] = true }

// address records an address added to or deleted from a link and reports whether the
// connections must be replaced: a deleted address that connections left from (from
// says), or a global one of a link that is not a dummy (the kernel matches the
// masqueraded address, which need not be the socket's).
func (t *trigger) address(index int, a netip.Addr, added bool, from func([]netip.Addr) bool) bool {
	if added {
		if a.IsGlobalUnicast() {
			t.carries[index] = true
		}
		return false
	}
	return from([]netip.Addr{a}) || (a.IsGlobalUnicast() && !t.dummy[index])
}

// gone forgets a deleted link.
func (t *trigger) gone(index int) {
	delete(t.up, index)
	delete(t.carries, index)
	delete(t.dummy, index)
}

// gatewayLinks returns the links a route leaves by through a gateway (one, or each of a
// multipath route's); none for a route to a directly connected network or a pod's veth.
func gatewayLinks(r netlink.Route) []int {
	var out []int
	if r.Gw != nil || r.Via != nil {
		out = append(out, r.LinkIndex)
	}
	for _, nh := range r.MultiPath {
		if nh != nil && (nh.Gw != nil || nh.Via != nil) {
			out = append(out, nh.LinkIndex)
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
			w.conns.CloseRetired(func() { // before the close, which a reader may see first
				w.log.Info("the kernel dropped the NAT state of the API connections: replacing them, the watches resume on new ones", "why", why.why, "of", why.what, "reachableAfter", took.Round(time.Millisecond))
				w.metrics.Replaced.WithLabelValues(why.why).Inc()
			})
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
