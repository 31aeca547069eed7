package bfd

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

var fast = Config{DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond, DetectMult: 3}

// exact makes transmissions happen at the interval itself, without jitter.
func exact(d time.Duration) time.Duration { return d }

// in returns a session in state st, as if the exchange that leads there had happened.
func in(t *testing.T, st State) *Session {
	t.Helper()
	s := NewSession(fast, 1, t0)
	s.SetJitter(exact)
	peer := Packet{DetectMult: 3, MyDiscriminator: 2, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}
	switch st {
	case Init:
		peer.State = Down
		s.Receive(peer, t0)
	case Up:
		peer.State, peer.YourDiscriminator = Init, 1
		s.Receive(peer, t0)
	case AdminDown:
		s.Shutdown(t0)
	}
	if got, _ := s.State(); got != st {
		t.Fatalf("set-up reached %s, not %s", got, st)
	}
	return s
}

// The reception rules of RFC 5880 §6.8.6, state by received state.
func TestReceiveTable(t *testing.T) {
	for _, tc := range []struct {
		from, rx State
		to       State
		diag     Diag
	}{
		{Down, Down, Init, DiagNone},
		{Down, Init, Up, DiagNone},
		{Down, Up, Down, DiagNone}, // a peer still Up from an old session does not bring us up
		{Down, AdminDown, Down, DiagNone},
		{Init, Down, Init, DiagNone},
		{Init, Init, Up, DiagNone},
		{Init, Up, Up, DiagNone},
		{Init, AdminDown, Down, DiagNeighborDown},
		{Up, Down, Down, DiagNeighborDown},
		{Up, Init, Up, DiagNone},
		{Up, Up, Up, DiagNone},
		{Up, AdminDown, Down, DiagNeighborDown},
		{AdminDown, Down, AdminDown, DiagAdminDown}, // ours to leave, not the peer's
		{AdminDown, Up, AdminDown, DiagAdminDown},
	} {
		s := in(t, tc.from)
		p := Packet{State: tc.rx, DetectMult: 3, MyDiscriminator: 2, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}
		if tc.rx != Down && tc.rx != AdminDown {
			p.YourDiscriminator = 1
		}
		_, changed := s.Receive(p, t0.Add(time.Millisecond))
		st, diag := s.State()
		if st != tc.to || diag != tc.diag || changed != (tc.from != tc.to) {
			t.Errorf("%s receiving %s: %s (diag %s, changed %v), want %s (diag %s)", tc.from, tc.rx, st, diag, changed, tc.to, tc.diag)
		}
	}
}

func TestReceiveIgnoresAnotherSessionsPacket(t *testing.T) {
	s := in(t, Up)
	if _, changed := s.Receive(Packet{State: Down, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 99}, t0); changed {
		t.Fatal("a packet for discriminator 99 changed session 1")
	}
	if st, _ := s.State(); st != Up {
		t.Fatalf("state %s", st)
	}
}

// Silence longer than the peer's multiplier times the agreed interval takes the session
// down (§6.8.4), and not a moment before.
func TestDetectionTime(t *testing.T) {
	s := in(t, Up)
	if got := s.DetectionTime(); got != 300*time.Millisecond {
		t.Fatalf("detection time %v, want 3 × 100ms", got)
	}
	if _, changed := s.Tick(t0.Add(300 * time.Millisecond)); changed {
		t.Fatal("down at exactly the detection time")
	}
	if next := s.Next(); next.After(t0.Add(301 * time.Millisecond)) {
		t.Fatalf("next tick at %v, after the detection time", next.Sub(t0))
	}
	p, changed := s.Tick(t0.Add(301 * time.Millisecond))
	if st, diag := s.State(); !changed || st != Down || diag != DiagDetectionExpired {
		t.Fatalf("after 301ms of silence: %s, %s", st, diag)
	}
	if p == nil || p.State != Down || p.Diag != DiagDetectionExpired || p.YourDiscriminator != 0 {
		t.Fatalf("the peer is told %+v", p)
	}
	// The peer's slower wish sets its detection time: 3 × its 500ms.
	s = in(t, Up)
	s.Receive(Packet{State: Up, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 500 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}, t0)
	if got := s.DetectionTime(); got != 1500*time.Millisecond {
		t.Fatalf("detection time %v, want 3 × the peer's 500ms", got)
	}
}

// Until Up, packets go out once a second (§6.8.3); Up, at the profile's interval, with a
// Poll Sequence announcing the change that ends with the peer's Final.
func TestTransmitIntervals(t *testing.T) {
	s := NewSession(fast, 1, t0)
	s.SetJitter(exact)
	p, _ := s.Tick(t0)
	if p == nil || p.State != Down || p.DesiredMinTx != time.Second || p.RequiredMinRx != 100*time.Millisecond {
		t.Fatalf("first packet %+v", p)
	}
	if p, _ := s.Tick(t0.Add(999 * time.Millisecond)); p != nil {
		t.Fatal("a second packet within a second while Down")
	}
	if p, _ := s.Tick(t0.Add(time.Second)); p == nil {
		t.Fatal("no packet after a second while Down")
	}
	now := t0.Add(1100 * time.Millisecond)
	s.Receive(Packet{State: Init, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: time.Second, RequiredMinRx: 100 * time.Millisecond}, now)
	p, _ = s.Tick(now)
	if p == nil || p.State != Up || !p.Poll || p.DesiredMinTx != 100*time.Millisecond {
		t.Fatalf("on going Up, sent %+v; want Up, Poll, 100ms", p)
	}
	if p, _ := s.Tick(now.Add(100 * time.Millisecond)); p == nil || !p.Poll {
		t.Fatalf("Poll not repeated until answered: %+v", p)
	}
	s.Receive(Packet{State: Up, Final: true, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}, now.Add(150*time.Millisecond))
	if p, _ := s.Tick(now.Add(200 * time.Millisecond)); p == nil || p.Poll {
		t.Fatalf("after the Final: %+v", p)
	}
}

func TestPollIsAnsweredWithFinal(t *testing.T) {
	s := in(t, Up)
	reply, _ := s.Receive(Packet{State: Up, Poll: true, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 50 * time.Millisecond, RequiredMinRx: 50 * time.Millisecond}, t0)
	if reply == nil || !reply.Final || reply.Poll || reply.State != Up || reply.YourDiscriminator != 2 {
		t.Fatalf("reply to a Poll: %+v", reply)
	}
}

// The slower of our interval and the peer's Required Min RX paces us; a peer asking for
// none gets none (§6.8.7).
func TestTransmitRespectsThePeer(t *testing.T) {
	s := in(t, Up)
	s.Tick(t0)
	s.Receive(Packet{State: Up, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 400 * time.Millisecond}, t0)
	s.Tick(t0.Add(100 * time.Millisecond)) // the packet due at 100ms schedules the next at +400ms
	if p, _ := s.Tick(t0.Add(300 * time.Millisecond)); p != nil {
		t.Fatal("sent faster than the peer's Required Min RX")
	}
	if p, _ := s.Tick(t0.Add(500 * time.Millisecond)); p == nil {
		t.Fatal("nothing sent at the peer's Required Min RX")
	}
	s.Receive(Packet{State: Up, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 100 * time.Millisecond}, t0.Add(600*time.Millisecond))
	for i := range 10 {
		if p, _ := s.Tick(t0.Add(time.Duration(600+100*i) * time.Millisecond)); p != nil {
			t.Fatal("sent to a peer whose Required Min RX is 0")
		}
		s.Receive(Packet{State: Up, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 100 * time.Millisecond}, t0.Add(time.Duration(600+100*i)*time.Millisecond))
	}
}

// A passive session says nothing until the peer has spoken (§6.1), then answers.
func TestPassive(t *testing.T) {
	cfg := fast
	cfg.Passive = true
	s := NewSession(cfg, 1, t0)
	s.SetJitter(exact)
	for i := range 5 {
		if p, _ := s.Tick(t0.Add(time.Duration(i) * time.Second)); p != nil {
			t.Fatal("a passive session spoke first")
		}
	}
	s.Receive(Packet{State: Down, DetectMult: 3, MyDiscriminator: 2, RequiredMinRx: 100 * time.Millisecond}, t0.Add(5*time.Second))
	if p, _ := s.Tick(t0.Add(5 * time.Second)); p == nil || p.State != Init || p.YourDiscriminator != 2 {
		t.Fatalf("after hearing the peer: %+v", p)
	}
}

// Jitter keeps every interval within 75–100% (75–90% with a multiplier of 1).
func TestJitter(t *testing.T) {
	for _, mult := range []uint8{3, 1} {
		s := NewSession(Config{DetectMult: mult}, 1, t0)
		hi := time.Second
		if mult == 1 {
			hi = 900 * time.Millisecond
		}
		for range 1000 {
			if d := s.jitter(time.Second); d < 750*time.Millisecond || d > hi {
				t.Fatalf("multiplier %d: interval %v", mult, d)
			}
		}
	}
}

// Shutdown says AdminDown with its diagnostic, and the session ignores the peer after.
func TestShutdown(t *testing.T) {
	s := in(t, Up)
	p := s.Shutdown(t0)
	if p.State != AdminDown || p.Diag != DiagAdminDown {
		t.Fatalf("shutdown sends %+v", p)
	}
}

// A peer lowering its Required Min RX (its slow start over) gets our next packet at the
// new pace, not at the one scheduled before.
func TestFasterPeerIsServedAtOnce(t *testing.T) {
	s := NewSession(fast, 1, t0)
	s.SetJitter(exact)
	s.Tick(t0)
	slow := Packet{State: Init, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: time.Second, RequiredMinRx: time.Second}
	s.Receive(slow, t0) // Up; the packet saying so goes at once
	s.Tick(t0)
	if next := s.Next(); next.Sub(t0) != time.Second {
		t.Fatalf("next packet at +%v, want +1s while the peer asks for 1s", next.Sub(t0))
	}
	quick := slow
	quick.State, quick.RequiredMinRx, quick.Poll = Up, 100*time.Millisecond, true
	s.Receive(quick, t0.Add(10*time.Millisecond))
	if next := s.Next(); next.Sub(t0) > 110*time.Millisecond {
		t.Fatalf("after the peer asked for 100ms, next packet at +%v", next.Sub(t0))
	}
}

// BenchmarkSession is one Up session's exchange: a packet received, one sent.
func BenchmarkSession(b *testing.B) {
	s := NewSession(fast, 1, t0)
	s.SetJitter(exact)
	p := Packet{State: Init, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}
	s.Receive(p, t0)
	p.State = Up
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(100 * time.Millisecond)
		s.Receive(p, now)
		if out, _ := s.Tick(now); out == nil {
			b.Fatal("nothing sent")
		}
	}
}
