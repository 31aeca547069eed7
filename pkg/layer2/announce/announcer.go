package announce

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/heraldlb/herald/pkg/layer2"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// DefaultBurst is when the gratuitous announcements of a newly owned address go out,
// counted from the takeover.
var DefaultBurst = []time.Duration{0, 50 * time.Millisecond, 250 * time.Millisecond}

// Options configure an Announcer.
type Options struct {
	Logger     *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil registers nowhere
	Burst      []time.Duration       // default DefaultBurst
	// Rescan is how often interfaces are listed again besides on netlink notifications;
	// default 10s.
	Rescan time.Duration
	// ConflictInterval is the least time between two announcements of one address in
	// answer to other nodes claiming it; default DefaultConflictInterval.
	ConflictInterval time.Duration
	// Ignore names interfaces never answered on: the forwarder's own link, which holds
	// the announced addresses and has no neighbours.
	Ignore []string
}

// DefaultConflictInterval is the least time between two announcements of one address in
// answer to other nodes claiming it: two nodes that both believe they own an address
// (for as long as their views of the cluster differ) each announce it at most this often.
const DefaultConflictInterval = 200 * time.Millisecond

// conflictQuiet is how long after the last claim from another node a conflict is over:
// the next claim is logged again.
const conflictQuiet = 30 * time.Second

// claimLogEvery bounds how often a conflict on one address is logged again when the
// claimer's hardware address changes: forged claims from ever-new addresses are each
// counted (the conflicts metric) but do not each become a log line.
const claimLogEvery = time.Second

// Announcer answers ARP and NDP for the owned addresses on this node's interfaces.
type Announcer struct {
	log     *slog.Logger
	metrics *metrics.Layer2
	burst   []time.Duration
	every   time.Duration
	defend  time.Duration // Options.ConflictInterval
	ignore  []string      // Options.Ignore
	poke    chan struct{}

	wg        sync.WaitGroup // every reader and burst Run started
	burstDone func()         // tests: called as each burst ends

	mu    sync.Mutex
	ctx   context.Context // Run's; nil before Run
	owned map[netip.Addr]layer2.Address
	links map[int]*link // by interface index
}

// link is one interface and its sockets.
type link struct {
	ifi      net.Interface
	prefixes []netip.Prefix
	arp      *packet.Conn
	ndp      *icmp6
	serves   map[netip.Addr]bool // guarded by Announcer.mu
	groups   map[netip.Addr]bool // solicited-node groups joined
	done     chan struct{}       // closed with the link: its readers return
	// conflicts are the owned addresses other nodes claimed lately, guarded by
	// Announcer.mu.
	conflicts map[netip.Addr]*dispute
}

// dispute is another node's claim on an address a link serves, and our answer to it.
type dispute struct {
	other   net.HardwareAddr // who claims it
	last    time.Time        // the last claim
	logged  time.Time        // when the conflict was last logged
	sent    time.Time        // our last announcement in answer
	pending bool             // an announcement in answer is scheduled
}

// New returns an Announcer; it answers nothing before Run.
func New(opts Options) *Announcer {
	opts.Logger = logging.OrDiscard(opts.Logger)
	opts.Registerer = metrics.OrPrivate(opts.Registerer)
	if opts.Burst == nil {
		opts.Burst = DefaultBurst
	}
	if opts.Rescan == 0 {
		opts.Rescan = 10 * time.Second
	}
	if opts.ConflictInterval <= 0 {
		opts.ConflictInterval = DefaultConflictInterval
	}
	return &Announcer{
		log: opts.Logger, metrics: metrics.NewLayer2(opts.Registerer), burst: opts.Burst, every: opts.Rescan, defend: opts.ConflictInterval,
		ignore: slices.Clone(opts.Ignore),
		poke:   make(chan struct{}, 1), owned: map[netip.Addr]layer2.Address{}, links: map[int]*link{},
	}
}

// Set replaces the set of owned addresses. Addresses no longer in it stop being
// answered at once; new ones are announced with a gratuitous burst.
func (a *Announcer) Set(owned []layer2.Address) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.owned = make(map[netip.Addr]layer2.Address, len(owned))
	for _, o := range owned {
		a.owned[o.IP] = o
	}
	a.metrics.Announced.Set(float64(len(a.owned)))
	a.reconcileLocked()
}

// Reannounce sends the gratuitous burst again for every address answered.
func (a *Announcer) Reannounce() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx == nil {
		return
	}
	ctx := a.ctx
	for _, l := range a.links {
		for ip := range l.serves {
			a.spawn(func() { a.announce(ctx, l, ip) })
		}
	}
}

// Serving returns, for each owned address, the interfaces it is answered on.
func (a *Announcer) Serving() map[netip.Addr][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[netip.Addr][]string{}
	for _, l := range a.links {
		for ip := range l.serves {
			out[ip] = append(out[ip], l.ifi.Name)
		}
	}
	for _, names := range out {
		slices.Sort(names)
	}
	return out
}

// Run watches the interfaces and answers on them until ctx ends. It returns once every
// socket is closed and every goroutine it started has ended.
func (a *Announcer) Run(ctx context.Context) error {
	a.mu.Lock()
	a.ctx = ctx
	a.mu.Unlock()
	defer a.wg.Wait()
	defer a.closeAll()

	updates := make(chan netlink.LinkUpdate, 16)
	addrs := make(chan netlink.AddrUpdate, 16)
	done := make(chan struct{})
	var subscribed []func()
	defer func() {
		close(done)
		for _, drain := range subscribed {
			drain() // the subscription's goroutine closes its channel when it ends
		}
	}()
	onErr := func(err error) { a.log.Warn("netlink subscription", "err", err) }
	if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		a.log.Warn("cannot watch links; rescanning periodically only", "err", err)
	} else {
		subscribed = append(subscribed, func() {
			for range updates {
			}
		})
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		a.log.Warn("cannot watch addresses; rescanning periodically only", "err", err)
	} else {
		subscribed = append(subscribed, func() {
			for range addrs {
			}
		})
	}
	t := time.NewTicker(a.every)
	defer t.Stop()
	a.rescan()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-updates:
		case <-addrs:
		case <-a.poke:
		case <-t.C:
		}
		a.rescan()
	}
}

// spawn runs f in a goroutine that Run waits for.
func (a *Announcer) spawn(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

func (a *Announcer) closeAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ctx = nil // nothing new starts: Run waits for what did
	for idx, l := range a.links {
		l.close()
		delete(a.links, idx)
	}
}

func (l *link) close() {
	select {
	case <-l.done:
		return
	default:
		close(l.done)
	}
	if l.arp != nil {
		l.arp.Close()
	}
	if l.ndp != nil {
		l.ndp.Close()
	}
}

// usable reports whether addresses may be answered on ifi: up, Ethernet-like, not
// loopback, and not a port of a bridge (the bridge itself answers).
func usable(ifi net.Interface) bool {
	if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != 6 {
		return false
	}
	_, err := os.Stat("/sys/class/net/" + ifi.Name + "/brport")
	return errors.Is(err, os.ErrNotExist)
}

// rescan brings the set of links in line with the interfaces.
func (a *Announcer) rescan() {
	ifis, err := net.Interfaces()
	if err != nil {
		a.log.Warn("list interfaces", "err", err)
		return
	}
	seen := map[int]bool{}
	for _, ifi := range ifis {
		if !usable(ifi) || slices.Contains(a.ignore, ifi.Name) {
			continue
		}
		seen[ifi.Index] = true
		var prefixes []netip.Prefix
		if as, err := ifi.Addrs(); err == nil {
			for _, ad := range as {
				if p, err := netip.ParsePrefix(ad.String()); err == nil {
					prefixes = append(prefixes, p.Masked())
				}
			}
		}
		a.mu.Lock()
		l := a.links[ifi.Index]
		if l == nil || l.ifi.Name != ifi.Name || string(l.ifi.HardwareAddr) != string(ifi.HardwareAddr) {
			if l != nil {
				l.close()
			}
			l = &link{ifi: ifi, serves: map[netip.Addr]bool{}, groups: map[netip.Addr]bool{}, conflicts: map[netip.Addr]*dispute{}, done: make(chan struct{})}
			a.links[ifi.Index] = l
		}
		l.prefixes = prefixes
		a.openLocked(l)
		a.mu.Unlock()
	}
	a.mu.Lock()
	for idx, l := range a.links {
		if !seen[idx] {
			a.log.Info("interface gone", "interface", l.ifi.Name)
			l.close()
			delete(a.links, idx)
		}
	}
	a.reconcileLocked()
	a.mu.Unlock()
}

// openLocked opens whatever socket of l is not open yet and starts its reader.
func (a *Announcer) openLocked(l *link) {
	if a.ctx == nil {
		return
	}
	if l.arp == nil {
		c, err := packet.Listen(&l.ifi, packet.Raw, 0x0806, nil)
		if err != nil {
			a.log.Warn("cannot answer ARP", "interface", l.ifi.Name, "err", err)
		} else {
			l.arp = c
			a.spawn(func() { a.serveARP(l, c) })
		}
	}
	if l.ndp == nil && slices.ContainsFunc(l.prefixes, func(p netip.Prefix) bool { return p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() }) {
		c, err := listenICMP6(l.ifi)
		if err != nil {
			a.log.Debug("cannot answer NDP yet", "interface", l.ifi.Name, "err", err)
			return
		}
		l.ndp = c
		l.groups = map[netip.Addr]bool{}
		a.spawn(func() { a.serveNDP(l, c) })
	}
}

// reconcileLocked computes which link serves which owned address, starting a gratuitous
// burst where an address is newly served and joining or leaving solicited-node groups.
func (a *Announcer) reconcileLocked() {
	for _, l := range a.links {
		want := map[netip.Addr]bool{}
		for ip, o := range a.owned {
			if servesOn(o, l) {
				want[ip] = true
			}
		}
		for ip := range want {
			if !l.serves[ip] {
				a.log.Info("announcing", "ip", ip, "interface", l.ifi.Name)
				if a.ctx != nil {
					ctx := a.ctx
					a.spawn(func() { a.announce(ctx, l, ip) })
				}
			}
		}
		for ip := range l.serves {
			if !want[ip] {
				a.log.Info("no longer announcing", "ip", ip, "interface", l.ifi.Name)
			}
		}
		for ip := range l.conflicts {
			if !want[ip] {
				delete(l.conflicts, ip)
			}
		}
		l.serves = want
		if l.ndp != nil {
			groups := map[netip.Addr]bool{}
			for ip := range want {
				if ip.Is6() {
					if g, err := ndp.SolicitedNodeMulticast(ip); err == nil {
						groups[g] = true
					}
				}
			}
			for g := range groups {
				if !l.groups[g] {
					if err := l.ndp.join(g); err != nil {
						a.log.Warn("join solicited-node group", "interface", l.ifi.Name, "group", g, "err", err)
						delete(groups, g)
					}
				}
			}
			for g := range l.groups {
				if !groups[g] {
					_ = l.ndp.leave(g)
				}
			}
			l.groups = groups
		}
	}
}

func servesOn(o layer2.Address, l *link) bool {
	if o.Interfaces != nil {
		return slices.Contains(o.Interfaces, l.ifi.Name)
	}
	return slices.ContainsFunc(l.prefixes, func(p netip.Prefix) bool { return p.Contains(o.IP) })
}

func (a *Announcer) serving(l *link) func(netip.Addr) bool {
	return func(ip netip.Addr) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return l.serves[ip]
	}
}

func family(ip netip.Addr) string {
	if ip.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// readFailed handles a read error: true when the reader should return (the link is
// closed, or the socket is gone); otherwise it waits a little, so that a failing socket
// cannot spin, until the next rescan replaces it.
func (l *link) readFailed(log *slog.Logger, proto string, err error) bool {
	select {
	case <-l.done:
		return true
	default:
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EBADF) {
		return true
	}
	log.Debug("read "+proto, "interface", l.ifi.Name, "err", err)
	select {
	case <-l.done:
		return true
	case <-time.After(100 * time.Millisecond):
		return false
	}
}

func (a *Announcer) serveARP(l *link, c *packet.Conn) {
	buf := make([]byte, 1514)
	owned := a.serving(l)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if l.readFailed(a.log, "ARP", err) {
				return
			}
			continue
		}
		reply, dst, cl, v := arpReply(buf[:n], l.ifi.HardwareAddr, owned)
		switch v {
		case answered:
			_, err = c.WriteTo(reply, &packet.Addr{HardwareAddr: dst})
		case conflict:
			a.claimed(l, cl)
		}
		a.count(l, "IPv4", v, err)
	}
}

func (a *Announcer) serveNDP(l *link, c *icmp6) {
	buf := make([]byte, 1500)
	owned := a.serving(l)
	for {
		n, src, hopLimit, err := c.read(buf)
		if err != nil {
			if l.readFailed(a.log, "NDP", err) {
				return
			}
			continue
		}
		r, cl, v := ndpReply(buf[:n], src, hopLimit, l.ifi.HardwareAddr, owned)
		switch v {
		case answered:
			err = a.sendNA(l, c, r)
		case conflict:
			a.claimed(l, cl)
		}
		a.count(l, "IPv6", v, err)
	}
}

// sendNA sends an advertisement as Linux does, from the target address, as a whole
// frame through the link's packet socket; without the solicitor's hardware address (or
// the packet socket), the kernel sends it through c from the link-local address.
func (a *Announcer) sendNA(l *link, c *icmp6, r reply) error {
	a.mu.Lock()
	raw := l.arp
	a.mu.Unlock()
	if r.dstMAC == nil || raw == nil {
		return c.writeTo(r.na, r.dst)
	}
	f, err := r.frame(l.ifi.HardwareAddr)
	if err != nil {
		return err
	}
	_, err = raw.WriteTo(f, &packet.Addr{HardwareAddr: r.dstMAC})
	return err
}

// count records what became of one packet read; sendErr is the reply's send error.
func (a *Announcer) count(l *link, family string, v verdict, sendErr error) {
	switch {
	case v == answered && sendErr != nil:
		a.log.Warn("send answer", "interface", l.ifi.Name, "family", family, "err", sendErr)
	case v == answered:
		a.metrics.Answered.WithLabelValues(family).Inc()
	case v == conflict:
		// counted by claimed
	case v != ownPacket:
		a.metrics.Dropped.WithLabelValues(family, v.String()).Inc()
	}
}

// announce sends the gratuitous burst for ip on l, stopping early if l stops serving it.
func (a *Announcer) announce(ctx context.Context, l *link, ip netip.Addr) {
	if a.burstDone != nil {
		defer a.burstDone()
	}
	start := time.Now()
	owned := a.serving(l)
	for _, at := range a.burst {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(start.Add(at))):
		}
		if !owned(ip) {
			return
		}
		a.gratuitous(l, ip)
	}
}

// gratuitous announces once that ip is at l: a gratuitous ARP in both forms, or an
// unsolicited override Neighbor Advertisement.
func (a *Announcer) gratuitous(l *link, ip netip.Addr) {
	a.mu.Lock()
	arpc, ndpc := l.arp, l.ndp
	a.mu.Unlock()
	if ip.Is4() && arpc != nil {
		frames, err := gratuitousARP(ip, l.ifi.HardwareAddr)
		if err != nil {
			a.log.Warn("build gratuitous ARP", "ip", ip, "err", err)
			return
		}
		for _, f := range frames {
			if _, err := arpc.WriteTo(f, &packet.Addr{HardwareAddr: broadcast}); err != nil {
				a.log.Warn("send gratuitous ARP", "ip", ip, "interface", l.ifi.Name, "err", err)
				continue
			}
			a.metrics.Gratuitous.WithLabelValues(family(ip)).Inc()
		}
	}
	if ip.Is6() && ndpc != nil {
		if err := a.sendNA(l, ndpc, unsolicitedNA(ip, l.ifi.HardwareAddr)); err != nil {
			a.log.Warn("send unsolicited Neighbor Advertisement", "ip", ip, "interface", l.ifi.Name, "err", err)
			return
		}
		a.metrics.Gratuitous.WithLabelValues(family(ip)).Inc()
	}
}

// claimed answers another node's claim on an address l serves by announcing the
// address again: at once, or, within ConflictInterval of the last such announcement,
// once at its end, so that the last word is this node's however many claims arrive. The
// first claim of a conflict is logged, with who claims; the conflict is over once the
// address goes conflictQuiet without claims, or is no longer served.
func (a *Announcer) claimed(l *link, cl claim) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx == nil || !l.serves[cl.ip] {
		return
	}
	for _, o := range a.links {
		if string(o.ifi.HardwareAddr) == string(cl.mac) {
			return // this node's own announcement, heard on another of its interfaces
		}
	}
	a.metrics.Conflicts.WithLabelValues(family(cl.ip)).Inc()
	now := time.Now()
	c := l.conflicts[cl.ip]
	if c == nil || now.Sub(c.last) > conflictQuiet || string(c.other) != string(cl.mac) {
		if c == nil {
			c = &dispute{}
			l.conflicts[cl.ip] = c
		}
		if c.logged.IsZero() || now.Sub(c.last) > conflictQuiet || now.Sub(c.logged) >= claimLogEvery {
			a.log.Warn("another node claims an address this node announces: announcing it again",
				"ip", cl.ip, "interface", l.ifi.Name, "mac", cl.mac.String())
			c.logged = now
		}
		c.other = slices.Clone(cl.mac)
	}
	c.last = now
	if c.pending {
		return
	}
	c.pending = true
	wait := max(c.sent.Add(a.defend).Sub(now), 0)
	ctx := a.ctx
	a.spawn(func() {
		if wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-l.done:
				return
			case <-t.C:
			}
		}
		a.mu.Lock()
		c.pending, c.sent = false, time.Now()
		serves := l.serves[cl.ip]
		a.mu.Unlock()
		if serves {
			a.gratuitous(l, cl.ip)
		}
	})
}
