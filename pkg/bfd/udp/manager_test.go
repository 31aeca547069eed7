package udp

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"

	"github.com/heraldlb/herald/pkg/bfd"
	"github.com/heraldlb/herald/pkg/leaktest"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// fast is a profile of 100 ms × 3.
var fast = bfd.Config{DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond, DetectMult: 3}

type changes struct {
	mu  sync.Mutex
	got []bfd.State
	ch  chan struct{}
}

func newChanges() *changes { return &changes{ch: make(chan struct{}, 100)} }

func (c *changes) on(ch bfd.Change) {
	c.mu.Lock()
	c.got = append(c.got, ch.To)
	c.mu.Unlock()
	c.ch <- struct{}{}
}

// wait waits until the last change is to st.
func (c *changes) wait(t *testing.T, st bfd.State, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(limit)
	for {
		c.mu.Lock()
		n := len(c.got)
		last := bfd.AdminDown
		if n > 0 {
			last = c.got[n-1]
		}
		c.mu.Unlock()
		if n > 0 && last == st {
			return time.Since(start)
		}
		select {
		case <-c.ch:
		case <-deadline:
			t.Fatalf("session not %s after %v (changes %v)", st, limit, c.got)
		}
	}
}

type running struct {
	m      *Manager
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func run(t *testing.T, listen, peer int, on func(bfd.Change)) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewManager(Options{ListenPort: listen, PeerPort: peer, MultihopListenPort: listen + 1000, MultihopPeerPort: peer + 1000, OnChange: on, Registerer: reg})
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{m: m, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := m.Run(ctx)
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		r.done <- err
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
}

// Two managers on loopback bring their session Up at the profile's pace; when one stops,
// it says AdminDown and the other goes Down at once, blaming the neighbour.
func TestManagersComeUpAndSayGoodbye(t *testing.T) {
	ca, cb := newChanges(), newChanges()
	a := run(t, 23784, 23785, ca.on)
	b := run(t, 23785, 23784, cb.on)
	for _, m := range []*Manager{a.m, b.m} {
		if err := m.Set([]Peer{{Addr: loopback, Config: fast}}); err != nil {
			t.Fatal(err)
		}
	}
	ca.wait(t, bfd.Up, 5*time.Second)
	cb.wait(t, bfd.Up, 5*time.Second)
	if got := testutil.ToFloat64(a.m.metrics.Up.WithLabelValues("127.0.0.1")); got != 1 {
		t.Errorf("herald_bfd_session_up = %v", got)
	}
	b.stop()
	if took := ca.wait(t, bfd.Down, time.Second); took > 50*time.Millisecond {
		t.Logf("bfd.AdminDown took %v to bring the session down (detection would take 300ms)", took)
	}
	if s := a.m.Sessions(); len(s) != 1 || s[0].State != bfd.Down || s[0].Diag != bfd.DiagNeighborDown {
		t.Errorf("sessions after the peer left: %+v", s)
	}
	a.stop()
	leaktest.Check(t, "github.com/heraldlb/herald/pkg/bfd/udp.")
}

// fakePeer is a BFD peer made of one UDP socket, sending exactly what a test says.
type fakePeer struct {
	c  *net.UDPConn
	to *net.UDPAddr
}

func newFakePeer(t *testing.T, port, to int) *fakePeer {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := ipv4.NewConn(c).SetTTL(255); err != nil {
		t.Fatal(err)
	}
	return &fakePeer{c: c, to: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: to}}
}

func (f *fakePeer) send(t *testing.T, p bfd.Packet) {
	t.Helper()
	if _, err := f.c.WriteToUDP(p.Marshal(), f.to); err != nil {
		t.Fatal(err)
	}
}

// recv reads packets until one satisfies ok.
func (f *fakePeer) recv(t *testing.T, ok func(bfd.Packet) bool) bfd.Packet {
	t.Helper()
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for range 200 {
		_ = f.c.SetReadDeadline(deadline)
		n, _, err := f.c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("no wanted packet: %v", err)
		}
		if p, err := bfd.Unmarshal(buf[:n]); err == nil && ok(p) {
			return p
		}
	}
	t.Fatal("no wanted packet in 200")
	return bfd.Packet{}
}

// A peer that falls silent (its path cut) is found down after the detection time, 3 ×
// 100ms, within a few milliseconds; malformed and low-TTL packets are dropped and counted.
func TestSilentPeerDetected(t *testing.T) {
	ch := newChanges()
	r := run(t, 23786, 23787, ch.on)
	peer := newFakePeer(t, 23787, 23786)
	if err := r.m.Set([]Peer{{Addr: loopback, Config: fast}}); err != nil {
		t.Fatal(err)
	}
	first := peer.recv(t, func(p bfd.Packet) bool { return p.State == bfd.Down })
	params := bfd.Packet{DetectMult: 3, MyDiscriminator: 77, YourDiscriminator: first.MyDiscriminator, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}
	params.State = bfd.Init
	peer.send(t, params)
	ch.wait(t, bfd.Up, 2*time.Second)
	params.State = bfd.Up
	// Malformed, and from a node more than one hop away: both dropped, neither resets
	// the detection timer.
	if _, err := peer.c.WriteToUDP([]byte{1, 2, 3}, peer.to); err != nil {
		t.Fatal(err)
	}
	low := newFakePeer(t, 23788, 23786)
	_ = ipv4.NewConn(low.c).SetTTL(64)
	var last time.Time
	for range 5 {
		peer.send(t, params)
		last = time.Now()
		low.send(t, params)
		time.Sleep(50 * time.Millisecond)
	}
	ch.wait(t, bfd.Down, 2*time.Second)
	down := time.Since(last)
	if s := r.m.Sessions(); s[0].Diag != bfd.DiagDetectionExpired {
		t.Errorf("diag %s, want control detection time expired", s[0].Diag)
	}
	if down < 300*time.Millisecond {
		t.Errorf("down %v after the last packet, before the detection time of 300ms", down)
	}
	t.Logf("down %v after the peer's last packet (detection time 300ms)", down.Round(time.Millisecond))
	for reason, want := range map[string]float64{"malformed": 1, "ttl": 5} {
		if got := testutil.ToFloat64(r.m.metrics.Dropped.WithLabelValues(reason)); got != want {
			t.Errorf("dropped %s: %v, want %v", reason, got, want)
		}
	}
}

// A multi-hop session (RFC 5883) runs on its own port and takes packets that crossed
// routers down to its minimum TTL; on the single-hop port it hears nothing.
func TestMultihop(t *testing.T) {
	ch := newChanges()
	r := run(t, 23790, 23791, ch.on)
	cfg := fast
	cfg.Multihop, cfg.MinTTL = true, 250
	if err := r.m.Set([]Peer{{Addr: loopback, Config: cfg}}); err != nil {
		t.Fatal(err)
	}
	single := newFakePeer(t, 23791, 23790)
	multi := newFakePeer(t, 24791, 24790)
	first := multi.recv(t, func(p bfd.Packet) bool { return p.State == bfd.Down })
	p := bfd.Packet{State: bfd.Init, DetectMult: 3, MyDiscriminator: 5, YourDiscriminator: first.MyDiscriminator, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}
	single.send(t, p)
	time.Sleep(50 * time.Millisecond)
	if s := r.m.Sessions(); s[0].State != bfd.Down {
		t.Fatalf("a packet on the single-hop port moved the multi-hop session to %s", s[0].State)
	}
	_ = ipv4.NewConn(multi.c).SetTTL(251) // four routers away, within minimum-ttl 250
	multi.send(t, p)
	ch.wait(t, bfd.Up, 2*time.Second)
	if got := testutil.ToFloat64(r.m.metrics.Dropped.WithLabelValues("no_session")); got != 1 {
		t.Errorf("dropped no_session: %v, want 1", got)
	}
}
