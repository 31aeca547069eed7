package bfd

import (
	"math/rand/v2"
	"time"
)

// Config is one session's parameters: a BFD profile.
type Config struct {
	DesiredMinTx  time.Duration // transmit-interval; default 300ms
	RequiredMinRx time.Duration // receive-interval; default 300ms
	DetectMult    uint8         // detect-multiplier; default 3
	Passive       bool          // passive-mode: send nothing until the peer does
	// Multihop runs the session over RFC 5883 (port 4784), for a peer more than one hop
	// away (ebgp-multihop).
	Multihop bool
	// MinTTL is the least TTL (hop limit) a packet of a multi-hop session may arrive
	// with (minimum-ttl, default 254). A single-hop session always demands 255 (RFC 5881
	// §5: a packet that crossed a router is not from the neighbour).
	MinTTL uint8
}

// WithDefaults fills what is unset.
func (c Config) WithDefaults() Config {
	if c.DesiredMinTx == 0 {
		c.DesiredMinTx = 300 * time.Millisecond
	}
	if c.RequiredMinRx == 0 {
		c.RequiredMinRx = 300 * time.Millisecond
	}
	if c.DetectMult == 0 {
		c.DetectMult = 3
	}
	switch {
	case !c.Multihop:
		c.MinTTL = 255
	case c.MinTTL == 0:
		c.MinTTL = 254
	}
	return c
}

// slowTx is the transmit interval of a session that is not Up (RFC 5880 §6.8.3: at
// least one second).
const slowTx = time.Second

// Session is the state machine of one BFD session (RFC 5880 §6.8): it takes received
// packets and the passage of time, and says what to send and when the state changed. It
// does no I/O and reads no clock: the caller passes the time.
type Session struct {
	cfg   Config
	local uint32 // bfd.LocalDiscr
	state State
	diag  Diag

	remote          uint32        // bfd.RemoteDiscr
	remoteState     State         // bfd.RemoteSessionState
	remoteMinRx     time.Duration // bfd.RemoteMinRxInterval
	remoteDesiredTx time.Duration
	remoteMult      uint8

	desiredTx time.Duration // bfd.DesiredMinTxInterval as sent now
	polling   bool          // a Poll Sequence is under way
	lastRx    time.Time
	nextTx    time.Time
	jitter    func(time.Duration) time.Duration
}

// NewSession starts a session in Down with discriminator local.
func NewSession(cfg Config, local uint32, now time.Time) *Session {
	cfg = cfg.WithDefaults()
	s := &Session{cfg: cfg, local: local, state: Down, remoteState: Down, remoteMinRx: time.Microsecond, desiredTx: max(cfg.DesiredMinTx, slowTx)}
	s.jitter = func(d time.Duration) time.Duration {
		// 75% to 100% of the interval, 90% at most with a multiplier of 1 (§6.8.7).
		hi := 25
		if cfg.DetectMult == 1 {
			hi = 15
		}
		return d * time.Duration(75+rand.IntN(hi+1)) / 100
	}
	s.nextTx = now
	return s
}

// SetJitter replaces the transmit jitter (tests make it exact).
func (s *Session) SetJitter(f func(time.Duration) time.Duration) { s.jitter = f }

// State returns the session's state and the diagnostic of its last fall.
func (s *Session) State() (State, Diag) { return s.state, s.diag }

// Local is the session's discriminator.
func (s *Session) Local() uint32 { return s.local }

// Remote is the peer's discriminator, 0 before the peer is heard.
func (s *Session) Remote() uint32 { return s.remote }

// txInterval is how often packets go out: the slower of our wish and the peer's limit.
func (s *Session) txInterval() time.Duration { return max(s.desiredTx, s.remoteMinRx) }

// DetectionTime is how long silence may last before the session goes down (§6.8.4).
func (s *Session) DetectionTime() time.Duration {
	return time.Duration(s.remoteMult) * max(s.cfg.RequiredMinRx, s.remoteDesiredTx)
}

func (s *Session) setState(st State, d Diag) bool {
	if s.state == st {
		return false
	}
	s.state, s.diag = st, d
	want := s.cfg.DesiredMinTx
	if st != Up {
		want = max(want, slowTx)
	}
	if want != s.desiredTx {
		// The transmit interval changes: a Poll Sequence tells the peer (§6.8.3). A
		// faster interval is used at once; it shortens nothing the peer relies on.
		s.desiredTx, s.polling = want, st == Up
	}
	if st != Up && st != Init {
		s.polling = false
	}
	return true
}

// Receive takes a packet from the peer at now (already checked by Unmarshal) and returns
// a packet to send at once (the Final answering a Poll), if any, and whether the state
// changed (RFC 5880 §6.8.6).
func (s *Session) Receive(p Packet, now time.Time) (*Packet, bool) {
	if p.YourDiscriminator != 0 && p.YourDiscriminator != s.local {
		return nil, false // not ours
	}
	s.remote = p.MyDiscriminator
	s.remoteState = p.State
	before := s.txInterval()
	s.remoteMinRx = p.RequiredMinRx
	s.remoteDesiredTx = p.DesiredMinTx
	s.remoteMult = p.DetectMult
	s.lastRx = now
	if p.Final && s.polling {
		s.polling = false
	}
	if s.state == AdminDown {
		return nil, false
	}
	changed := false
	switch {
	case p.State == AdminDown:
		if s.state != Down {
			changed = s.setState(Down, DiagNeighborDown)
		}
	case s.state == Down && p.State == Down:
		changed = s.setState(Init, DiagNone)
	case s.state == Down && p.State == Init, s.state == Init && (p.State == Init || p.State == Up):
		changed = s.setState(Up, DiagNone)
	case s.state == Up && p.State == Down:
		changed = s.setState(Down, DiagNeighborDown)
	}
	if iv := s.txInterval(); changed {
		s.nextTx = now // say the new state at once
	} else if iv < before && s.nextTx.After(now.Add(iv)) {
		// The peer now wants packets more often (the end of its slow start): a packet
		// scheduled at the old pace would come too late for its detection time.
		s.nextTx = now.Add(s.jitter(iv))
	}
	if p.Poll {
		reply := s.packet()
		reply.Final, reply.Poll = true, false
		return &reply, changed
	}
	return nil, changed
}

// Tick lets time pass to now: it takes the session down when the peer has been silent for
// the detection time, and returns the packet to send if one is due (nil otherwise), and
// whether the state changed.
func (s *Session) Tick(now time.Time) (*Packet, bool) {
	changed := false
	if (s.state == Up || s.state == Init) && now.Sub(s.lastRx) > s.DetectionTime() {
		changed = s.setState(Down, DiagDetectionExpired)
		s.remote, s.remoteDesiredTx = 0, 0
		s.remoteMinRx = time.Microsecond
		s.nextTx = now
	}
	if now.Before(s.nextTx) {
		return nil, changed
	}
	s.nextTx = now.Add(s.jitter(s.txInterval()))
	if s.cfg.Passive && s.remote == 0 {
		return nil, changed // passive: wait to be spoken to (§6.1)
	}
	if s.remoteMinRx == 0 {
		return nil, changed // the peer asks for no packets (§6.8.7)
	}
	p := s.packet()
	return &p, changed
}

// Next is when Tick must be called again at the latest.
func (s *Session) Next() time.Time {
	next := s.nextTx
	if s.state == Up || s.state == Init {
		if expire := s.lastRx.Add(s.DetectionTime() + time.Millisecond); expire.Before(next) {
			next = expire
		}
	}
	return next
}

func (s *Session) packet() Packet {
	return Packet{
		Diag: s.diag, State: s.state, Poll: s.polling, DetectMult: s.cfg.DetectMult,
		MyDiscriminator: s.local, YourDiscriminator: s.remote,
		DesiredMinTx: s.desiredTx, RequiredMinRx: s.cfg.RequiredMinRx,
	}
}

// Shutdown takes the session to AdminDown: the packets that follow tell the peer to
// take its side down without blaming the path (§6.8.16).
func (s *Session) Shutdown(now time.Time) *Packet {
	s.setState(AdminDown, DiagAdminDown)
	p := s.packet()
	return &p
}
