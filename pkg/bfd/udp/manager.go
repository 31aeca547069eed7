// Package udp runs BFD sessions (pkg/bfd's state machine) on real sockets: RFC 5881
// single-hop on UDP port 3784 and RFC 5883 multi-hop on 4784, TTL 255 out and checked in
// (a packet whose TTL the kernel did not report is dropped). The sessions' owner is told
// of changes off the goroutine that runs them, so that a slow owner (a BGP session reset
// waiting for a lock) never delays a session's packets or timers.
package udp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/heraldlb/herald/pkg/bfd"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// Peer is one session to run: to Addr, with Config.
type Peer struct {
	Addr   netip.Addr
	Config bfd.Config
}

// Options configure a Manager.
type Options struct {
	// OnChange is told every change of a session's state: each peer's changes in order,
	// on a goroutine of that peer's own, never on the one that sends and times the
	// sessions; a slow OnChange only delays its peer's later changes (past a few
	// queued, they coalesce to the first failure and the last change). It must return:
	// Run waits for it.
	OnChange   func(bfd.Change)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// ListenPort and PeerPort are where single-hop packets are received and sent,
	// default Port; MultihopListenPort and MultihopPeerPort the same for multi-hop
	// sessions, default MultihopPort (tests use others).
	ListenPort, PeerPort                 int
	MultihopListenPort, MultihopPeerPort int
}

// Manager runs the sessions of one node: a receiving socket per family on the single-hop
// and the multi-hop port, and a sending socket per session, from a port of its own
// (RFC 5881 §4), with TTL 255.
type Manager struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics.BFD
	wake    chan struct{}
	notify  *notifier // Run's

	mu       sync.Mutex
	sessions map[netip.Addr]*managed
	byDiscr  map[uint32]*managed
}

type managed struct {
	peer Peer
	s    *bfd.Session
	conn net.PacketConn // sends to the peer
}

// NewManager returns a Manager; nothing runs before Run.
func NewManager(opts Options) *Manager {
	if opts.ListenPort == 0 {
		opts.ListenPort = bfd.Port
	}
	if opts.PeerPort == 0 {
		opts.PeerPort = bfd.Port
	}
	if opts.MultihopListenPort == 0 {
		opts.MultihopListenPort = bfd.MultihopPort
	}
	if opts.MultihopPeerPort == 0 {
		opts.MultihopPeerPort = bfd.MultihopPort
	}
	return &Manager{
		opts: opts, log: logging.OrDiscard(opts.Logger), wake: make(chan struct{}, 1),
		metrics:  metrics.NewBFD(metrics.OrPrivate(opts.Registerer)),
		sessions: map[netip.Addr]*managed{}, byDiscr: map[uint32]*managed{},
	}
}

// Set makes the sessions exactly peers: new ones start Down, gone ones are shut down
// (AdminDown, so the peer does not blame the path), changed ones restart.
func (m *Manager) Set(peers []Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		p.Config = p.Config.WithDefaults()
		want[p.Addr] = p
	}
	now := time.Now()
	var errs []error
	for addr, ms := range m.sessions {
		if p, ok := want[addr]; ok && p == ms.peer {
			continue
		}
		m.closeLocked(ms, now)
	}
	for addr, p := range want {
		if _, ok := m.sessions[addr]; ok {
			continue
		}
		port := m.opts.PeerPort
		if p.Config.Multihop {
			port = m.opts.MultihopPeerPort
		}
		conn, err := sender(addr, port)
		if err != nil {
			errs = append(errs, fmt.Errorf("BFD session to %s: %w", addr, err))
			continue
		}
		local := m.discriminatorLocked()
		ms := &managed{peer: p, s: bfd.NewSession(p.Config, local, now), conn: conn}
		m.sessions[addr], m.byDiscr[local] = ms, ms
		m.metrics.Up.WithLabelValues(addr.String()).Set(0)
		m.log.Info("BFD session added", "peer", addr, "transmitInterval", p.Config.DesiredMinTx, "receiveInterval", p.Config.RequiredMinRx,
			"detectMultiplier", p.Config.DetectMult, "passive", p.Config.Passive, "multihop", p.Config.Multihop, "minimumTTL", p.Config.MinTTL)
	}
	m.poke()
	return errors.Join(errs...)
}

func (m *Manager) closeLocked(ms *managed, now time.Time) {
	if p := ms.s.Shutdown(now); p != nil {
		_, _ = ms.conn.WriteTo(p.Marshal(), nil)
	}
	_ = ms.conn.Close()
	delete(m.sessions, ms.peer.Addr)
	delete(m.byDiscr, ms.s.Local())
	m.metrics.Up.DeleteLabelValues(ms.peer.Addr.String())
}

func (m *Manager) discriminatorLocked() uint32 {
	for {
		d := rand.Uint32()
		if _, used := m.byDiscr[d]; d != 0 && !used {
			return d
		}
	}
}

// Sessions returns every session's status, sorted by peer.
func (m *Manager) Sessions() []bfd.Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]bfd.Status, 0, len(m.sessions))
	for addr, ms := range m.sessions {
		st, diag := ms.s.State()
		out = append(out, bfd.Status{Peer: addr, State: st, Diag: diag})
	}
	slices.SortFunc(out, func(a, b bfd.Status) int { return a.Peer.Compare(b.Peer) })
	return out
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// sender opens the socket that sends to peer: from an ephemeral port of the range RFC 5881
// asks for, TTL (hop limit) 255.
func sender(peer netip.Addr, port int) (net.PacketConn, error) {
	network, any := "udp4", "0.0.0.0"
	if peer.Is6() {
		network, any = "udp6", "::"
	}
	var last error
	for range 20 {
		src := 49152 + rand.IntN(65535-49152+1)
		c, err := net.ListenPacket(network, net.JoinHostPort(any, fmt.Sprint(src)))
		if err != nil {
			last = err
			continue
		}
		if peer.Is4() {
			err = ipv4.NewPacketConn(c).SetTTL(255)
		} else {
			err = ipv6.NewPacketConn(c).SetHopLimit(255)
		}
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		return &connected{PacketConn: c, to: net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer, uint16(port)))}, nil
	}
	return nil, fmt.Errorf("no free source port: %w", last)
}

// connected writes to one address whatever WriteTo is given.
type connected struct {
	net.PacketConn
	to net.Addr
}

func (c *connected) WriteTo(b []byte, _ net.Addr) (int, error) { return c.PacketConn.WriteTo(b, c.to) }

// Run receives and sends until ctx ends, then shuts every session down.
func (m *Manager) Run(ctx context.Context) error {
	m.notify = newNotifier(ctx, m.opts.OnChange)
	defer m.notify.wait()
	var wg sync.WaitGroup
	defer wg.Wait()
	recv := make(chan received, 64)
	var conns []net.PacketConn
	for _, l := range []struct {
		port     int
		multihop bool
	}{{m.opts.ListenPort, false}, {m.opts.MultihopListenPort, true}} {
		for _, family := range []string{"udp4", "udp6"} {
			addr := "0.0.0.0"
			if family == "udp6" {
				addr = "::"
			}
			c, err := net.ListenPacket(family, net.JoinHostPort(addr, fmt.Sprint(l.port)))
			if err != nil {
				if family == "udp6" {
					m.log.Debug("no IPv6 BFD", "port", l.port, "err", err)
					continue
				}
				for _, c := range conns {
					_ = c.Close()
				}
				wg.Wait()
				return fmt.Errorf("BFD: listen on UDP port %d: %w", l.port, err)
			}
			conns = append(conns, c)
			r, err := newTTLReader(c, family == "udp6")
			if err != nil {
				for _, c := range conns {
					_ = c.Close()
				}
				wg.Wait()
				return fmt.Errorf("BFD: UDP port %d: %w", l.port, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.read(ctx, r, l.multihop, recv)
			}()
		}
	}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	defer m.shutdown()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-recv:
			m.receive(r)
		case <-m.wake:
		case <-timer.C:
		}
		next := m.tick(time.Now())
		timer.Reset(max(time.Until(next), 0))
	}
}

func (m *Manager) shutdown() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for _, ms := range m.sessions {
		m.closeLocked(ms, now)
	}
}

type received struct {
	p    bfd.Packet
	from netip.Addr
	at   time.Time
}

// ttlReader reads datagrams with the TTL (hop limit) they arrived with.
type ttlReader interface {
	// readFrom reads one datagram; ttl is 0 when the kernel did not report it.
	readFrom(buf []byte) (n, ttl int, src net.Addr, err error)
}

type ttl4 struct{ c *ipv4.PacketConn }

func (r ttl4) readFrom(buf []byte) (int, int, net.Addr, error) {
	n, cm, src, err := r.c.ReadFrom(buf)
	if cm == nil {
		return n, 0, src, err
	}
	return n, cm.TTL, src, err
}

type ttl6 struct{ c *ipv6.PacketConn }

func (r ttl6) readFrom(buf []byte) (int, int, net.Addr, error) {
	n, cm, src, err := r.c.ReadFrom(buf)
	if cm == nil {
		return n, 0, src, err
	}
	return n, cm.HopLimit, src, err
}

// newTTLReader asks the kernel to report the TTL (hop limit) of every datagram c reads.
func newTTLReader(c net.PacketConn, v6 bool) (ttlReader, error) {
	if v6 {
		p := ipv6.NewPacketConn(c)
		if err := p.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
			return nil, fmt.Errorf("ask for the hop limit of received packets: %w", err)
		}
		return ttl6{p}, nil
	}
	p := ipv4.NewPacketConn(c)
	if err := p.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		return nil, fmt.Errorf("ask for the TTL of received packets: %w", err)
	}
	return ttl4{p}, nil
}

// read reads packets from r until it fails (its socket closed), checking the TTL (hop
// limit): one the kernel did not report cannot be checked, and is dropped.
func (m *Manager) read(ctx context.Context, r ttlReader, multihop bool, out chan<- received) {
	buf := make([]byte, 128)
	for {
		n, ttl, src, err := r.readFrom(buf)
		if err != nil {
			return
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort().Addr().Unmap()
		pkt, err := bfd.Unmarshal(buf[:n])
		if errors.Is(err, bfd.ErrUnsupported) {
			m.metrics.Dropped.WithLabelValues("unsupported").Inc()
			continue
		} else if err != nil {
			m.metrics.Dropped.WithLabelValues("malformed").Inc()
			continue
		}
		m.mu.Lock()
		ms := m.sessions[from]
		m.mu.Unlock()
		if ms == nil || ms.peer.Config.Multihop != multihop {
			m.metrics.Dropped.WithLabelValues("no_session").Inc()
			continue
		}
		if ttl <= 0 {
			m.metrics.Dropped.WithLabelValues("no_ttl").Inc()
			continue
		}
		if ttl < int(ms.peer.Config.MinTTL) {
			m.metrics.Dropped.WithLabelValues("ttl").Inc()
			continue
		}
		select {
		case out <- received{p: pkt, from: from, at: time.Now()}:
		case <-ctx.Done():
			return
		}
	}
}

func (m *Manager) receive(r received) {
	m.mu.Lock()
	ms := m.sessions[r.from]
	if r.p.YourDiscriminator != 0 {
		ms = m.byDiscr[r.p.YourDiscriminator]
	}
	if ms == nil || ms.peer.Addr != r.from {
		m.mu.Unlock()
		m.metrics.Dropped.WithLabelValues("no_session").Inc()
		return
	}
	from, _ := ms.s.State()
	reply, changed := ms.s.Receive(r.p, r.at)
	to, diag := ms.s.State()
	m.mu.Unlock()
	if reply != nil {
		_, _ = ms.conn.WriteTo(reply.Marshal(), nil)
	}
	if changed {
		m.changed(bfd.Change{Peer: ms.peer.Addr, From: from, To: to, Diag: diag,
			PeerAdminDown: r.p.State == bfd.AdminDown, PeerDiag: r.p.Diag})
	}
}

// tick runs every session's timers and returns when to come back.
func (m *Manager) tick(now time.Time) time.Time {
	var changes []bfd.Change
	next := now.Add(time.Second)
	m.mu.Lock()
	for _, ms := range m.sessions {
		from, _ := ms.s.State()
		p, changed := ms.s.Tick(now)
		if p != nil {
			if _, err := ms.conn.WriteTo(p.Marshal(), nil); err != nil {
				m.log.Debug("send BFD", "peer", ms.peer.Addr, "err", err)
			}
		}
		if changed {
			to, diag := ms.s.State()
			changes = append(changes, bfd.Change{Peer: ms.peer.Addr, From: from, To: to, Diag: diag})
		}
		if n := ms.s.Next(); n.Before(next) {
			next = n
		}
	}
	m.mu.Unlock()
	for _, c := range changes {
		m.changed(c)
	}
	return next
}

func (m *Manager) changed(c bfd.Change) {
	up := 0.0
	if c.To == bfd.Up {
		up = 1
	}
	m.metrics.Up.WithLabelValues(c.Peer.String()).Set(up)
	m.metrics.Changes.WithLabelValues(c.Peer.String(), c.To.String()).Inc()
	m.log.Info("BFD session state", "peer", c.Peer, "from", c.From.String(), "state", c.To.String(), "diag", c.Diag.String(), "failed", c.Failed(), "peerDiag", c.PeerDiag.String(), "peerAdminDown", c.PeerAdminDown)
	m.notify.push(c)
}
