// Package liveness tells a speaker, from its own connections, which other speakers are
// dead, much sooner than gossip can: every speaker holds a TCP connection to every other
// (a full mesh) and sends a heartbeat on it every Interval. Every connection and every
// frame on it is authenticated with keys derived from the gossip key, and replay-proof
// (frame.go); without a key there is no detector. Beyond Config.Mesh peers it holds connections to its ring neighbours only,
// and deaths are reported to the others, which check for themselves (monitors.go).
//
//   - A crash is a kernel fact: when a process dies its kernel closes its sockets at once,
//     so the peer's read ends within a round trip; a new connection to its port, refused
//     while its node lives, confirms the death (Closed). Only a refusal does: a dial that
//     fails on this node (no descriptors, its own link down) says nothing of the peer, and
//     one unanswered is tried again until silence decides.
//   - A node that dies or whose link is cut sends nothing more: a peer silent for Timeout
//     is dead (Silent), unless this speaker is itself unwell — its own timers ran late, or
//     it hears from no one at all — in which case it waits longer rather than accuse
//     (Lifeguard's local health).
//   - A speaker that stops says so first (Left), and waits until every peer has applied
//     what follows (Acks), so that the next owners announce before it stops answering.
//
// A speaker that hears from no one (cut off, or its link just came back) dials every
// neighbour again at heartbeat pace, whichever of the two normally dials, so that a healed
// partition is known on both sides within a heartbeat or so.
//
// Each speaker acts on what it observed itself; nothing it is told by one peer about
// another is trusted without a check of its own. memberlist stays the source of membership; this package only says,
// earlier, which members are gone.
package liveness

import (
	"bufio"
	"cmp"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// Reason says how a peer's death was learned.
type Reason uint8

// The ways a death is learned.
const (
	Closed Reason = iota + 1 // its connection closed and a new one was refused
	Silent                   // no heartbeat for Timeout
	Left                     // it said it was leaving
)

func (r Reason) String() string {
	switch r {
	case Closed:
		return "connection_closed"
	case Silent:
		return "heartbeat"
	case Left:
		return "leave"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Defaults, for a LAN.
const (
	DefaultInterval = 50 * time.Millisecond
	DefaultTimeout  = 250 * time.Millisecond
)

// Config configures a Detector.
type Config struct {
	Name   string // this speaker's name (its node's)
	Listen string // host:port it accepts peers on
	// Key authenticates the peers and every message (the gossip key, at least
	// MinKeyLen bytes). Required: without one, run no detector (memberlist alone).
	Key []byte
	// Peers returns the other speakers to watch: name → host:port.
	Peers    func() map[string]string
	Interval time.Duration // between heartbeats; default DefaultInterval
	Timeout  time.Duration // silence that makes a peer dead; default DefaultTimeout
	// Mesh is how many peers a speaker watches all of (a full mesh); beyond it, it
	// watches Monitors neighbours on each side of a ring (see monitors.go). Defaults
	// DefaultMesh and DefaultMonitors.
	Mesh, Monitors int
	// Broadcast sends msg to every other speaker and Send to one (through memberlist, whose
	// encryption with the gossip key authenticates them); the receiver hands it to
	// Deliver. They carry reports of deaths beyond the mesh and leaves to speakers this
	// one holds no connection to. Nil: none is sent.
	Broadcast func(msg []byte)
	Send      func(to string, msg []byte)
	Logger    *slog.Logger
	// Registerer takes the metrics (herald_liveness_*); nil registers nowhere.
	Registerer prometheus.Registerer
	// MaxInbound bounds the accepted connections held at once, MaxHandshakes those not
	// yet authenticated among them; beyond, a new one is closed at once. Defaults
	// Mesh+2×Monitors+16 and 16. Of the handshakes, at most a quarter (at least one) come
	// from addresses that are no peer's: connections from elsewhere cannot take the
	// peers' places.
	MaxInbound, MaxHandshakes int
}

// MinKeyLen is the shortest key accepted (memberlist's keys are 16, 24 or 32 bytes).
const MinKeyLen = 16

// ErrNoKey is returned by New without a key: the detector does not run unauthenticated.
var ErrNoKey = errors.New("liveness: no key (the memberlist Secret's): the failure detector does not run unauthenticated")

// recheck is how often a speaker asks a peer dead beyond its ring whether it is back.
const recheck = time.Second

// forgetIsolated is how long a speaker that hears from no one keeps dialling the peers
// memberlist no longer lists (its view is as cut off as the speaker) before it takes
// memberlist's word: they may have left for good.
const forgetIsolated = 2 * time.Minute

// Detector watches the other speakers over its own connections.
type Detector struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}
	metrics *metrics.Liveness

	mu      sync.Mutex
	ln      net.Listener
	peers   map[string]*peer  // by name
	dead    map[string]Reason // peers found dead, until they come back
	gen     uint64            // incremented with every change of dead
	leavers map[string]uint64 // peers that left, and the generation that recorded it, not acked yet
	acks    map[string]bool   // while leaving: which peers acknowledged
	acked   chan struct{}     // an acknowledgement came (coalesced)
	dialing map[string]bool   // peers being dialled now
	leaving bool
	seen    map[string]bool // the live members memberlist reported last (Observe)
	health  int             // local health: 0 is well; each step doubles the patience
	// watched are the peers on this speaker's ring (nil: a full mesh); verifying, the
	// reported deaths being checked; reports, deaths to tell the others of (Run sends them).
	watched   map[string]bool
	ringLen   int // how many peers watched was computed from
	verifying map[string]bool
	reports   chan report
	running   bool // between Run's start and its end: goroutines may be spawned
	wg        sync.WaitGroup

	msgKey []byte             // authenticates the messages through memberlist
	fresh  map[freshKey]int64 // the newest time taken per sender, kind and subject
	sent   int64              // the time of the last message this speaker sent
	// inbound and handshakes count the accepted connections held and those not yet
	// authenticated; strangers, those of the latter from an address no peer listens on.
	inbound, handshakes, strangers int
	// peerIPs are the addresses the peers listen on (from their host:port), made again
	// when one changes.
	peerIPs map[netip.Addr]bool
	// localErr is when a dial last failed on this node itself; linkUp when a link of
	// this node last came up. Both make it dial all its neighbours for a while.
	localErr, linkUp time.Time
	redial           chan struct{}
	connected        bool      // a peer connected once
	isolatedSince    time.Time // since when it hears from no one (zero: it does)
	// dialFn, when set (by tests), dials instead of a net.Dialer.
	dialFn func(ctx context.Context, addr string) (net.Conn, error)
}

type peer struct {
	name  string
	addr  string
	lost  bool       // its connection ended and nothing answered since: silence decides
	conn  net.Conn   // written holding the Detector's lock and wmu
	sess  *session   // conn's keys; its sealer is used holding wmu
	wmu   sync.Mutex // serialises writes on conn
	heard time.Time  // last frame read
	since time.Time  // when the connection was made
	bye   bool       // the peer closes this connection as a neighbour no longer
	// checked is when this speaker last asked, beyond its ring, whether the peer lives.
	checked   time.Time
	neighbour bool // on this speaker's ring (always, in a full mesh)
}

// New returns a Detector; it listens and dials when Run is called.
func New(cfg Config) (*Detector, error) {
	if cfg.Name == "" || cfg.Listen == "" || cfg.Peers == nil {
		return nil, errors.New("liveness: Name, Listen and Peers are required")
	}
	cfg.Interval = cmp.Or(cfg.Interval, DefaultInterval)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	cfg.Mesh = cmp.Or(cfg.Mesh, DefaultMesh)
	cfg.Monitors = cmp.Or(cfg.Monitors, DefaultMonitors)
	if cfg.Mesh < 1 || cfg.Monitors < 1 {
		return nil, fmt.Errorf("liveness: a mesh of %d and %d monitors; both must be at least 1", cfg.Mesh, cfg.Monitors)
	}
	if cfg.Timeout < 2*cfg.Interval {
		return nil, fmt.Errorf("liveness: a timeout of %s is under two heartbeat intervals (%s)", cfg.Timeout, cfg.Interval)
	}
	if len(cfg.Key) == 0 {
		return nil, ErrNoKey
	}
	if len(cfg.Key) < MinKeyLen {
		return nil, fmt.Errorf("liveness: a key of %d bytes; at least %d", len(cfg.Key), MinKeyLen)
	}
	cfg.MaxInbound = cmp.Or(cfg.MaxInbound, cfg.Mesh+2*cfg.Monitors+16)
	cfg.MaxHandshakes = cmp.Or(cfg.MaxHandshakes, 16)
	msgKey, err := hkdf.Key(sha256.New, cfg.Key, nil, "herald-liveness-memberlist-2", keyLen)
	if err != nil {
		return nil, err
	}
	return &Detector{
		msgKey: msgKey, fresh: map[freshKey]int64{}, redial: make(chan struct{}, 1),
		cfg: cfg, log: logging.OrDiscard(cfg.Logger), changed: make(chan struct{}, 1),
		metrics: metrics.NewLiveness(metrics.OrPrivate(cfg.Registerer)),
		peers:   map[string]*peer{}, dead: map[string]Reason{}, leavers: map[string]uint64{},
		acked: make(chan struct{}, 1), dialing: map[string]bool{},
		verifying: map[string]bool{}, reports: make(chan report, 64),
	}, nil
}

// Changed receives a value after the set of dead peers changed (coalesced).
func (d *Detector) Changed() <-chan struct{} { return d.changed }

// Dead returns the peers found dead and the generation of that view, to hand to Applied
// once what follows from it is in force.
func (d *Detector) Dead() (map[string]Reason, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.dead), d.gen
}

// Applied says the speaker has acted on the view of generation gen: peers that left
// before it are acknowledged, so they may stop answering.
func (d *Detector) Applied(gen uint64) {
	d.mu.Lock()
	var ack []*peer
	var tell []string
	for name, g := range d.leavers {
		if g <= gen {
			if p := d.peers[name]; p != nil && p.conn != nil {
				ack = append(ack, p)
			} else {
				tell = append(tell, name) // it told us through memberlist: answer the same way
			}
			delete(d.leavers, name)
		}
	}
	d.mu.Unlock()
	for _, p := range ack {
		_ = p.send(frameAck, d.cfg.Interval)
	}
	if d.cfg.Send != nil {
		for _, name := range tell {
			d.cfg.Send(name, d.seal(msgAck, name))
		}
	}
}

func (d *Detector) notify() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// markDeadLocked records a death once.
func (d *Detector) markDeadLocked(name string, why Reason, silentFor time.Duration) {
	if _, ok := d.dead[name]; ok {
		return
	}
	d.dead[name] = why
	d.gen++
	if why == Left {
		d.leavers[name] = d.gen
	}
	d.metrics.Deaths.WithLabelValues(why.String()).Inc()
	if why != Left {
		d.metrics.Detection.Observe(silentFor.Seconds())
	}
	d.log.Info("speaker found dead", "member", name, "how", why.String(), "after", silentFor.Round(time.Millisecond))
	if why != Left && d.watched[name] {
		d.reportLocked(msgDead, name) // a neighbour: the others rely on its monitors
	}
	d.notify()
}

func (d *Detector) aliveLocked(name string) {
	if _, ok := d.dead[name]; ok {
		delete(d.dead, name)
		delete(d.leavers, name)
		d.gen++
		d.log.Info("speaker back", "member", name)
		if d.watched[name] {
			d.reportLocked(msgBack, name)
		}
		d.notify()
	}
}

// Run listens, dials and watches until ctx ends.
func (d *Detector) Run(ctx context.Context) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", d.cfg.Listen)
	if err != nil {
		return fmt.Errorf("liveness: listen on %s: %w", d.cfg.Listen, err)
	}
	d.mu.Lock()
	d.ln, d.running = ln, true
	d.mu.Unlock()
	defer d.wg.Wait()
	defer d.closeAll()
	d.spawn(func() { d.accept(ctx, ln) })
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	next := time.Now().Add(d.cfg.Interval)
	healthy := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-d.reports:
			d.cfg.Broadcast(d.seal(r.kind, r.name))
		case <-d.redial:
			d.mu.Lock()
			d.linkUp = time.Now()
			d.mu.Unlock()
			d.tick(ctx, time.Now())
		case now := <-t.C:
			// Local health: a tick that came late means this process is starved, and what
			// looks like a peer's silence may be its own.
			if late := now.Sub(next); late > d.cfg.Interval {
				d.mu.Lock()
				d.health = min(d.health+1, 3)
				d.mu.Unlock()
				healthy = 0
			} else if healthy++; healthy > 20 {
				d.mu.Lock()
				d.health = max(d.health-1, 0)
				d.mu.Unlock()
				healthy = 0
			}
			next = now.Add(d.cfg.Interval)
			d.tick(ctx, now)
		}
	}
}

func (d *Detector) spawn(f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

func (d *Detector) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.running = false
	_ = d.ln.Close()
	for _, p := range d.peers {
		if p.conn != nil {
			_ = p.conn.Close()
		}
	}
}

// tick sends heartbeats, dials the peers this speaker dials that have no connection, and
// declares dead those silent too long. A speaker that hears from no one, or whose link
// just came up, dials every neighbour not heard from lately, whichever of the two
// normally dials.
func (d *Detector) tick(ctx context.Context, now time.Time) {
	want := d.cfg.Peers()
	d.mu.Lock()
	changed := len(want) != d.ringLen
	addrChanged := d.peerIPs == nil
	for name, addr := range want {
		if name == d.cfg.Name {
			continue
		}
		p := d.peers[name]
		if p == nil {
			p = &peer{name: name}
			d.peers[name] = p
			changed = true
		}
		addrChanged = addrChanged || p.addr != addr
		p.addr = addr
	}
	if addrChanged || changed {
		d.peerIPs = map[netip.Addr]bool{}
		for name := range want {
			if ip, ok := hostIP(want[name]); ok {
				d.peerIPs[ip] = true
			}
		}
	}
	patience := d.cfg.Timeout << d.health
	heardAny := d.heardAnyLocked(now)
	// Cut off: this speaker's memberlist is as cut off as it is, and would have it forget
	// the peers it must find again once the partition heals.
	// (Not before it heard from anyone: at the start, the lower names dial.)
	isolated := !heardAny && d.connected && len(d.peers) > 0
	if !isolated {
		d.isolatedSince = time.Time{}
	} else if d.isolatedSince.IsZero() {
		d.isolatedSince = now
	}
	switch {
	case changed && (!isolated || now.Sub(d.isolatedSince) > forgetIsolated):
		for name, p := range d.peers {
			if _, ok := want[name]; !ok && p.conn == nil {
				delete(d.peers, name) // gone from the membership: memberlist's word stands
				delete(d.dead, name)
			}
		}
		d.watched = ring(d.cfg.Name, slices.Collect(maps.Keys(want)), d.cfg.Mesh, d.cfg.Monitors)
		d.ringLen = len(want)
		for name, p := range d.peers {
			p.neighbour = d.watched == nil || d.watched[name]
		}
	case changed:
		// Cut off, the ring stays as it was (memberlist's shrunken view would make every
		// peer a neighbour to dial).
		for name, p := range d.peers {
			p.neighbour = d.watched == nil || d.watched[name]
		}
	}
	// A dial that failed on this node says nothing of the peers: their silence is not
	// judged while it lasts.
	localTrouble := now.Sub(d.localErr) < patience
	redialAll := isolated || now.Sub(d.linkUp) < d.cfg.Timeout
	var beat, dial, bye []*peer
	for _, p := range d.peers {
		if p.conn == nil && !p.lost && !p.neighbour {
			continue // beyond the ring, and not connected: nothing to do (most of them, past the mesh)
		}
		if p.conn != nil && !p.neighbour && d.cfg.Name < p.name && now.Sub(p.since) > d.cfg.Timeout {
			bye = append(bye, p) // no longer a neighbour (the ring changed)
			continue
		}
		if p.conn != nil {
			beat = append(beat, p)
		}
		if p.conn != nil || p.lost {
			if silent := now.Sub(p.heard); silent > patience && (heardAny || len(d.peers) == 1) && !(p.conn == nil && localTrouble) {
				if _, known := d.dead[p.name]; !known {
					d.markDeadLocked(p.name, Silent, silent)
					if p.conn != nil {
						// A fresh connection, once the link heals, rather than this one.
						_ = p.conn.Close()
					}
				}
			}
		}
		if d.leaving || !p.neighbour {
			continue
		}
		// Neighbours are dialled by the lower name of the two; by both while a speaker
		// may be cut off.
		if p.conn == nil && d.cfg.Name < p.name {
			dial = append(dial, p)
		} else if redialAll && (p.conn == nil || now.Sub(p.heard) > 2*d.cfg.Interval) {
			dial = append(dial, p)
		}
	}
	// A peer dead beyond the ring is asked now and then whether it is back (its
	// neighbours also say so at once).
	var back []string
	for name := range d.dead {
		if p := d.peers[name]; p != nil && !p.neighbour && now.Sub(p.checked) > recheck {
			back = append(back, name)
		}
	}
	for _, p := range bye {
		p.bye = true
	}
	d.mu.Unlock()
	for _, p := range bye {
		_ = p.send(frameBye, d.cfg.Interval)
		p.wmu.Lock()
		if p.conn != nil {
			_ = p.conn.Close()
		}
		p.wmu.Unlock()
	}
	for _, p := range beat {
		_ = p.send(frameBeat, d.cfg.Interval)
	}
	for _, p := range dial {
		d.spawnDial(ctx, p, redialAll)
	}
	for _, name := range back {
		d.check(ctx, name)
	}
}

// hostIP returns the address of a host:port, IPv4 unmapped.
func hostIP(hostport string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap().WithZone(""), true
}

// refused records that a dial to name was refused: its node lives (its kernel
// answered) and its process is gone. A peer held dead for its silence is then dead as
// Closed instead: its node is no longer taken to be dead or cut off (the speaker keeps
// forwarding to it), though its speaker stays dead.
func (d *Detector) refused(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.peers[name]; p != nil && p.conn == nil && d.dead[name] == Silent {
		d.dead[name] = Closed
		d.gen++
		d.log.Info("speaker dead, its node alive: its port refuses", "member", name)
		d.notify()
	}
}

// Redial has the detector dial every neighbour at once and for a timeout after: this
// node's link came back up (LinkWatcher), and its connections may be stale.
func (d *Detector) Redial() {
	select {
	case d.redial <- struct{}{}:
	default:
	}
}

// noteLocal records a dial that failed on this node itself.
func (d *Detector) noteLocal(addr, name string) {
	d.mu.Lock()
	d.localErr = time.Now()
	d.mu.Unlock()
	d.log.Debug("dial failed on this node; not held against the peer", "member", name, "addr", addr)
}

// heardAnyLocked says whether any connected peer was heard within the patience of this
// speaker's health: if none was, a silence may be this speaker's own.
func (d *Detector) heardAnyLocked(now time.Time) bool {
	patience := d.cfg.Timeout << d.health
	for _, p := range d.peers {
		if p.conn != nil && now.Sub(p.heard) < patience {
			return true
		}
	}
	return false
}

// spawnDial dials p unless a dial is under way; jitter delays it up to half an interval
// (many speakers cut off together do not dial in step).
func (d *Detector) spawnDial(ctx context.Context, p *peer, jitter bool) {
	d.mu.Lock()
	if d.dialing[p.name] {
		d.mu.Unlock()
		return // a slow dial is not started twice
	}
	d.dialing[p.name] = true
	addr := p.addr
	d.mu.Unlock()
	d.spawn(func() {
		dialled := false
		done := func() {
			if !dialled {
				dialled = true
				d.mu.Lock()
				delete(d.dialing, p.name)
				d.mu.Unlock()
			}
		}
		defer done()
		if jitter {
			select {
			case <-ctx.Done():
				return
			case <-time.After(rand.N(d.cfg.Interval/2 + 1)):
			}
		}
		conn, err := d.dialWithin(ctx, addr, 2*d.cfg.Interval)
		if err != nil {
			switch v := judgeDial(err); {
			case v == local && ctx.Err() == nil:
				d.noteLocal(addr, p.name)
			case v == refused:
				d.refused(p.name)
			}
			return
		}
		// Dialling everyone again (cut off), a handshake that does not complete within a
		// couple of heartbeats gives way to the next try rather than hold up the heal.
		within := d.cfg.Timeout
		if jitter {
			within = 2 * d.cfg.Interval
		}
		sess, err := d.dialHandshakeWithin(conn, p.name, within)
		if err != nil {
			if dropReason(err) != 0 {
				d.log.Warn("speaker refused on the liveness channel", "member", p.name, "err", err)
			} else {
				d.log.Debug("liveness handshake failed", "member", p.name, "err", err)
			}
			_ = conn.Close()
			return
		}
		done() // the dial is over; the connection lives on (and may be replaced)
		d.adopt(ctx, p.name, conn, sess)
	})
}

func (d *Detector) dialWithin(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d.mu.Lock()
	dial := d.dialFn
	d.mu.Unlock()
	if dial != nil {
		return dial(dctx, addr)
	}
	return (&net.Dialer{}).DialContext(dctx, "tcp", addr)
}

// dialHandshake authenticates a connection this speaker made to name; a refusal is
// counted.
func (d *Detector) dialHandshake(conn net.Conn, name string) (*session, error) {
	return d.dialHandshakeWithin(conn, name, d.cfg.Timeout)
}

func (d *Detector) dialHandshakeWithin(conn net.Conn, name string, timeout time.Duration) (*session, error) {
	sess, err := dialHandshake(conn, d.cfg.Key, d.cfg.Name, name, timeout)
	if err != nil && dropReason(err) != 0 {
		d.dropped(err, name)
	}
	return sess, err
}

// dropped counts and logs a refused message or connection.
func (d *Detector) dropped(err error, from string) {
	why := dropReason(err)
	if why == 0 {
		return
	}
	d.metrics.Dropped.WithLabelValues(why.String()).Inc()
	d.log.Debug("liveness message refused", "peer", from, "reason", why.String(), "err", err)
}

// accept takes connections within the limits: beyond MaxInbound held or MaxHandshakes
// unauthenticated, a new one is closed at once (and counted); each has Timeout to prove
// the key.
func (d *Detector) accept(ctx context.Context, ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
			return // closed by closeAll
		}
		if err != nil {
			// Out of descriptors or memory, for a moment: try again after a heartbeat.
			d.log.Debug("liveness accept", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d.cfg.Interval):
			}
			continue
		}
		src, _ := hostIP(conn.RemoteAddr().String())
		d.mu.Lock()
		stranger := !d.peerIPs[src]
		over := d.inbound >= d.cfg.MaxInbound || d.handshakes >= d.cfg.MaxHandshakes ||
			(stranger && d.strangers >= max(d.cfg.MaxHandshakes/4, 1))
		leaving := d.leaving
		if !over && !leaving {
			d.inbound++
			d.handshakes++
			if stranger {
				d.strangers++
			}
		}
		d.mu.Unlock()
		if over || leaving {
			if over {
				d.dropped(drop(DropLimit, "%d inbound connections, %d unauthenticated", d.cfg.MaxInbound, d.cfg.MaxHandshakes), conn.RemoteAddr().String())
			}
			_ = conn.Close() // leaving: no new connection (it would prove this speaker back)
			continue
		}
		d.spawn(func() {
			defer func() {
				d.mu.Lock()
				d.inbound--
				d.mu.Unlock()
			}()
			name, sess, err := answerHandshake(conn, d.cfg.Key, d.cfg.Name, d.cfg.Timeout)
			d.mu.Lock()
			d.handshakes--
			if stranger {
				d.strangers--
			}
			d.mu.Unlock()
			if err != nil {
				if errors.Is(err, io.EOF) {
					_ = conn.Close() // opened and closed: a check that it listens
					return
				}
				if dropReason(err) == 0 {
					err = drop(DropHandshake, "%v", err) // it did not finish: cut short or too slow
				}
				d.dropped(err, conn.RemoteAddr().String())
				_ = conn.Close()
				return
			}
			d.adopt(ctx, name, conn, sess)
		})
	}
}

// adopt makes conn the connection to name and reads it until it fails, then the next
// connection its end makes to the peer (in a loop: a peer that reconnects again and
// again does not deepen the stack). When both ends dialled at once, both keep the
// connection the lower name dialled.
func (d *Detector) adopt(ctx context.Context, name string, conn net.Conn, sess *session) {
	for conn != nil {
		conn, sess = d.adoptOne(ctx, name, conn, sess)
	}
}

// adoptOne is one connection of adopt: it returns the next to adopt, if any.
func (d *Detector) adoptOne(ctx context.Context, name string, conn net.Conn, sess *session) (net.Conn, *session) {
	d.mu.Lock()
	if d.leaving || !d.running {
		d.mu.Unlock()
		_ = conn.Close() // leaving, or stopped: closeAll would never close it
		return nil, nil
	}
	p := d.peers[name]
	if p == nil {
		p = &peer{name: name, neighbour: d.watched == nil || d.watched[name]}
		d.peers[name] = p
	}
	now := time.Now()
	low := min(d.cfg.Name, name)
	if p.conn != nil && p.sess.dialler == low && sess.dialler != low && now.Sub(p.since) < d.cfg.Timeout && now.Sub(p.heard) < d.cfg.Timeout {
		d.mu.Unlock()
		_ = conn.Close() // the other of two made at once
		return nil, nil
	}
	old := p.conn
	wasAlive := old != nil && now.Sub(p.heard) < d.cfg.Timeout
	p.setConn(conn, sess)
	p.heard, p.since, p.lost, p.bye = now, now, false, false
	d.connected = true
	if _, dead := d.dead[name]; dead {
		d.aliveLocked(name)
	} else if !wasAlive {
		d.notify() // it joins Alive: heard again before memberlist knows
	}
	d.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return d.read(ctx, p, conn, sess)
}

// read handles conn's frames until it fails, then finds out whether the peer died. A
// frame refused (forged, replayed, cut short, too long, of an unknown type) is counted
// and ends the connection: the peer, if alive, connects again. It returns the new
// connection this speaker made to the peer meanwhile, for adopt to take.
func (d *Detector) read(ctx context.Context, p *peer, conn net.Conn, sess *session) (net.Conn, *session) {
	r := bufio.NewReader(conn)
	var readErr error
	for {
		typ, _, err := sess.in.read(r)
		if err != nil {
			readErr = err
			d.dropped(err, p.name)
			break
		}
		d.mu.Lock()
		if p.conn == conn {
			p.heard = time.Now()
			if d.dead[p.name] == Silent {
				d.aliveLocked(p.name) // it was only cut off: the link healed
			}
		}
		switch typ {
		case frameBye:
			if p.conn == conn {
				p.bye = true
			}
		case frameLeave:
			d.markDeadLocked(p.name, Left, 0)
		case frameAck:
			if d.acks != nil {
				d.acks[p.name] = true
				select {
				case d.acked <- struct{}{}:
				default:
				}
			}
		}
		d.mu.Unlock()
	}
	_ = conn.Close()
	d.mu.Lock()
	current := p.conn == conn
	bye := current && p.bye
	if current {
		p.setConn(nil, nil)
		p.bye = false
	}
	leaving, silent := d.leaving, time.Since(p.heard)
	_, known := d.dead[p.name]
	addr := p.addr
	d.mu.Unlock()
	if !current || bye || leaving || known || ctx.Err() != nil {
		return nil, nil // replaced, closed as no longer a neighbour, the end of this speaker, or known
	}
	// The connection ended: the process behind it may be gone. Ask its kernel: a new
	// connection is refused once the process is gone. One made meanwhile proves nothing
	// until it completes the handshake: a dying process's listening socket may still
	// complete a connection for a moment before the kernel closes it. A dial unanswered
	// is tried again (a new SYN); one that fails on this node says nothing.
	start := time.Now()
	for try := 0; ctx.Err() == nil && time.Since(start) < d.cfg.Timeout; try++ {
		probe, err := d.dialWithin(ctx, addr, min(2*d.cfg.Interval, max(d.cfg.Timeout-time.Since(start), time.Millisecond)))
		if err != nil {
			v := judgeDial(err)
			if v == refused {
				d.mu.Lock()
				if p.conn == nil {
					d.markDeadLocked(p.name, Closed, time.Since(start)+min(silent, d.cfg.Interval))
				}
				d.mu.Unlock()
				return nil, nil
			}
			if v == local {
				d.noteLocal(addr, p.name)
				break
			}
			continue // unanswered: a new SYN, until the timeout
		}
		if psess, herr := d.dialHandshake(probe, p.name); herr == nil {
			if d.cfg.Name < p.name {
				return probe, psess // it lives (it restarted): the new connection
			}
			_ = probe.Close() // it lives, and dials this speaker again
			return nil, nil
		}
		_ = probe.Close()
		d.log.Debug("liveness connection ended", "member", p.name, "err", readErr, "try", try)
		time.Sleep(time.Millisecond << min(try, 5))
	}
	// Unknown: the node may be gone (silence decides), or a new connection comes.
	d.mu.Lock()
	if p.conn == nil {
		p.heard = time.Now().Add(-silent) // judged by its silence from here on
		p.lost = true
	}
	d.mu.Unlock()
	return nil, nil
}

// Leave tells every peer this speaker is leaving and waits, up to ctx, until each has
// acknowledged (it has acted on it: the next owners announce). It stops accepting and
// dialling. Run must still be running.
func (d *Detector) Leave(ctx context.Context) {
	d.mu.Lock()
	d.leaving = true
	d.acks = map[string]bool{}
	var to, told []*peer
	for _, p := range d.peers {
		if _, dead := d.dead[p.name]; p.conn != nil {
			to = append(to, p)
		} else if d.watched != nil && !dead {
			told = append(told, p) // beyond the ring: told through memberlist
		}
	}
	d.mu.Unlock()
	for _, p := range to {
		_ = p.send(frameLeave, d.cfg.Interval)
	}
	if len(told) > 0 && d.cfg.Broadcast != nil {
		d.cfg.Broadcast(d.seal(msgLeaving, d.cfg.Name))
	} else {
		told = nil
	}
	start := time.Now()
	for {
		d.mu.Lock()
		done := true
		for _, p := range to {
			done = done && (d.acks[p.name] || p.conn == nil)
		}
		for _, p := range told {
			_, gone := d.dead[p.name]
			done = done && (d.acks[p.name] || gone || d.peers[p.name] != p)
		}
		d.mu.Unlock()
		if done {
			d.log.Info("handed over to the other speakers", "peers", len(to)+len(told), "after", time.Since(start).Round(time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
			d.log.Warn("leaving without every speaker's acknowledgement", "after", time.Since(start).Round(time.Millisecond))
			return
		case <-d.acked:
		case <-time.After(d.cfg.Interval):
		}
	}
}

// setConn changes the peer's connection; the caller holds the Detector's lock, and send
// reads it under wmu alone.
func (p *peer) setConn(c net.Conn, sess *session) {
	p.wmu.Lock()
	p.conn, p.sess = c, sess
	p.wmu.Unlock()
}

// send writes one authenticated frame of type typ on the peer's connection.
func (p *peer) send(typ byte, timeout time.Duration) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	c := p.conn
	if c == nil {
		return net.ErrClosed
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.Write(p.sess.out.seal(typ, nil))
	return err
}

// Observe is told the live members memberlist reports; a member it drops that this
// detector had not found dead is counted as a death only memberlist saw.
func (d *Detector) Observe(alive []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := map[string]bool{}
	for _, n := range alive {
		now[n] = true
	}
	for name := range d.seen {
		if _, dead := d.dead[name]; !now[name] && !dead && name != d.cfg.Name {
			d.metrics.Deaths.WithLabelValues("memberlist").Inc()
		}
	}
	d.seen = now
}

// Alive lists the peers heard from within the timeout on a connection of their own:
// alive whatever memberlist says (it learns of a healed partition later).
func (d *Detector) Alive() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	now := time.Now()
	for name, p := range d.peers {
		if _, dead := d.dead[name]; p.conn != nil && !dead && now.Sub(p.heard) < d.cfg.Timeout {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Peers lists the peers connected now, sorted (for tests and status).
func (d *Detector) Peers() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for name, p := range d.peers {
		if p.conn != nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
