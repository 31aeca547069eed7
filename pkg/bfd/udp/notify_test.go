package udp

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"

	"github.com/heraldlb/herald/pkg/bfd"
)

var loopback6 = netip.MustParseAddr("::1")

// A session's OnChange that blocks (a BGP reset waiting for the BGP server's lock) delays
// neither its own session's packets and timers nor another session's: the peer sees
// both sessions come Up and stay Up.
func TestBlockedOnChangeDelaysNoSession(t *testing.T) {
	if c, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("needs IPv6 on loopback: %v", err)
	} else {
		c.Close()
	}
	release := make(chan struct{})
	blocked := make(chan struct{}, 1)
	ca := newChanges()
	a := run(t, 23792, 23793, func(c bfd.Change) {
		if c.Peer == loopback6 {
			select {
			case blocked <- struct{}{}:
			default:
			}
			<-release
			return
		}
		ca.on(c)
	})
	var mu sync.Mutex
	seen := map[netip.Addr][]bfd.State{}
	b := run(t, 23793, 23792, func(c bfd.Change) {
		mu.Lock()
		seen[c.Peer] = append(seen[c.Peer], c.To)
		mu.Unlock()
	})
	t.Cleanup(func() { close(release) }) // before the managers stop: Run waits for OnChange
	peers := []Peer{{Addr: loopback, Config: fast}, {Addr: loopback6, Config: fast}}
	for _, m := range []*Manager{a.m, b.m} {
		if err := m.Set(peers); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("OnChange never called for ::1")
	}
	ca.wait(t, bfd.Up, 5*time.Second)
	// Ten transmit intervals, more than three detection times: a stalled side would
	// have let the peer's sessions expire.
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	want := map[netip.Addr][]bfd.State{loopback: {bfd.Up}, loopback6: {bfd.Up}}
	for peer, states := range seen { // Down→Init→Up or Down→Up, then nothing
		if n := len(states); n > 0 && states[0] == bfd.Init {
			seen[peer] = states[1:]
		}
	}
	if diff := cmp.Diff(want, seen, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("the peer's session states (-want +got):\n%s", diff)
	}
	for _, s := range a.m.Sessions() {
		if s.State != bfd.Up {
			t.Errorf("session to %s %s while its OnChange is blocked, want Up", s.Peer, s.State)
		}
	}
}

// While a peer's OnChange is blocked, its changes queue up to maxPending, then coalesce
// to the first failure and the last change: the reset the failure calls for still
// happens, and the peer ends where the session stands.
func TestNotifierCoalesces(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	var got []bfd.Change
	n := newNotifier(context.Background(), func(c bfd.Change) {
		if len(got) == 0 {
			close(started)
			<-release
		}
		got = append(got, c)
	})
	up := bfd.Change{Peer: loopback, From: bfd.Down, To: bfd.Up}
	failed := bfd.Change{Peer: loopback, From: bfd.Up, To: bfd.Down, Diag: bfd.DiagDetectionExpired}
	n.push(up)
	<-started
	n.push(failed)
	for i := range 40 {
		n.push(bfd.Change{Peer: loopback, From: bfd.Down, To: bfd.Init, Diag: bfd.Diag(i % 3)})
		n.mu.Lock()
		if q := len(n.peers[loopback].changes); q > maxPending {
			t.Errorf("%d changes queued, want at most %d", q, maxPending)
		}
		n.mu.Unlock()
	}
	last := bfd.Change{Peer: loopback, From: bfd.Init, To: bfd.Up}
	n.push(last)
	close(release)
	n.wait()
	// The one in progress, then what the bounded queue held: the failure kept, the
	// last change last.
	if len(got) < 3 || len(got) > 1+maxPending {
		t.Fatalf("%d changes delivered, want 3 to %d: %v", len(got), 1+maxPending, got)
	}
	if diff := cmp.Diff([]bfd.Change{up, failed, last}, []bfd.Change{got[0], got[1], got[len(got)-1]}, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("delivered first, second and last (-want +got):\n%s", diff)
	}
}

// Once the Manager's context ends, queued changes are dropped and the workers end.
func TestNotifierStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	calls := 0
	n := newNotifier(ctx, func(bfd.Change) { calls++; <-release })
	for range 5 {
		n.push(bfd.Change{Peer: loopback, To: bfd.Up})
	}
	cancel()
	close(release)
	n.wait()
	if calls > 1 {
		t.Errorf("%d changes delivered after the context ended, want at most the one in progress", calls)
	}
}

// A packet whose TTL the kernel did not report cannot be checked: it is dropped and
// counted, never handed to its session. The same packet with its TTL reported is.
func TestPacketWithoutTTLDropped(t *testing.T) {
	m := NewManager(Options{})
	if err := m.Set([]Peer{{Addr: loopback, Config: fast}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.shutdown)
	pkt := bfd.Packet{State: bfd.Down, DetectMult: 3, MyDiscriminator: 9, DesiredMinTx: time.Second, RequiredMinRx: time.Second}
	for _, tt := range []struct {
		name    string
		withTTL bool
	}{{"without TTL", false}, {"with TTL", true}} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var r ttlReader = ttl4{ipv4.NewPacketConn(c)} // no control message asked for
			if tt.withTTL {
				if r, err = newTTLReader(c, false); err != nil {
					t.Fatal(err)
				}
			}
			out := make(chan received, 1)
			done := make(chan struct{})
			go func() { defer close(done); m.read(context.Background(), r, false, out) }()
			defer func() { c.Close(); <-done }()
			s, err := net.Dial("udp4", c.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := ipv4.NewConn(s.(*net.UDPConn)).SetTTL(255); err != nil {
				t.Fatal(err)
			}
			before := testutil.ToFloat64(m.metrics.Dropped.WithLabelValues("no_ttl"))
			if _, err := s.Write(pkt.Marshal()); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-out:
				if !tt.withTTL {
					t.Errorf("handed to its session: %+v", r)
				}
			case <-time.After(time.Second):
				if tt.withTTL {
					t.Error("not handed to its session")
				}
			}
			want := before
			if !tt.withTTL {
				want++
			}
			if got := testutil.ToFloat64(m.metrics.Dropped.WithLabelValues("no_ttl")); got != want {
				t.Errorf("dropped no_ttl: %v, want %v", got, want)
			}
		})
	}
}
