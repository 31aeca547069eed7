// Package bfd is Bidirectional Forwarding Detection (RFC 5880) in asynchronous mode: a
// session per BGP peer that has a BFD profile, so that when a node's link is cut the
// router drops its paths within detect-multiplier × interval instead of the BGP hold
// time, and so that Herald resets a BGP session whose path is gone. GoBGP v3, Herald's
// BGP engine, has no BFD. Echo mode and authentication are not implemented: a profile's
// echo-mode is accepted with a warning, as MetalLB 0.12 configurations use it, and
// sessions send Required Min Echo RX Interval 0, so that the peer sends no echo packets.
//
// The package is pure: Packet (the wire format, fuzzed), Session (the state machine of
// RFC 5880 §6.8, given the time by its caller, table-tested) and Change (which falls are
// the path failing). pkg/bfd/udp runs sessions on sockets.
package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// State is a session's state (RFC 5880 §4.1).
type State uint8

// The states.
const (
	AdminDown State = 0
	Down      State = 1
	Init      State = 2
	Up        State = 3
)

func (s State) String() string {
	switch s {
	case AdminDown:
		return "admin_down"
	case Down:
		return "down"
	case Init:
		return "init"
	case Up:
		return "up"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Diag is why a session last went down (RFC 5880 §4.1).
type Diag uint8

// The diagnostics Herald sets.
const (
	DiagNone             Diag = 0
	DiagDetectionExpired Diag = 1
	DiagNeighborDown     Diag = 3
	DiagAdminDown        Diag = 7
)

func (d Diag) String() string {
	switch d {
	case DiagNone:
		return "none"
	case DiagDetectionExpired:
		return "control_detection_time_expired"
	case 2:
		return "echo_function_failed"
	case DiagNeighborDown:
		return "neighbor_signaled_session_down"
	case 4:
		return "forwarding_plane_reset"
	case 5:
		return "path_down"
	case 6:
		return "concatenated_path_down"
	case DiagAdminDown:
		return "administratively_down"
	case 8:
		return "reverse_concatenated_path_down"
	}
	return fmt.Sprintf("Diag(%d)", uint8(d))
}

// Packet is a BFD control packet without authentication (RFC 5880 §4.1).
type Packet struct {
	Diag              Diag
	State             State
	Poll, Final       bool
	ControlPlaneIndep bool
	Auth              bool
	Demand            bool
	Multipoint        bool
	DetectMult        uint8
	MyDiscriminator   uint32
	YourDiscriminator uint32
	DesiredMinTx      time.Duration // microsecond resolution on the wire
	RequiredMinRx     time.Duration
	RequiredMinEchoRx time.Duration
}

const packetLen = 24

// Errors of Unmarshal, which the receiver counts by kind.
var (
	ErrShort       = errors.New("bfd: packet shorter than 24 bytes")
	ErrVersion     = errors.New("bfd: not version 1")
	ErrLength      = errors.New("bfd: length field does not match the packet")
	ErrField       = errors.New("bfd: a field has a value RFC 5880 forbids")
	ErrUnsupported = errors.New("bfd: authentication or multipoint, which Herald does not do")
)

// Marshal writes p in wire format.
func (p Packet) Marshal() []byte {
	b := make([]byte, packetLen)
	b[0] = 1<<5 | byte(p.Diag&0x1f)
	b[1] = byte(p.State) << 6
	for bit, on := range []bool{p.Poll, p.Final, p.ControlPlaneIndep, p.Auth, p.Demand, p.Multipoint} {
		if on {
			b[1] |= 0x20 >> bit
		}
	}
	b[2] = p.DetectMult
	b[3] = packetLen
	binary.BigEndian.PutUint32(b[4:], p.MyDiscriminator)
	binary.BigEndian.PutUint32(b[8:], p.YourDiscriminator)
	binary.BigEndian.PutUint32(b[12:], micros(p.DesiredMinTx))
	binary.BigEndian.PutUint32(b[16:], micros(p.RequiredMinRx))
	binary.BigEndian.PutUint32(b[20:], micros(p.RequiredMinEchoRx))
	return b
}

func micros(d time.Duration) uint32 {
	us := d.Microseconds()
	if us < 0 {
		return 0
	}
	if us > 0xffffffff {
		return 0xffffffff
	}
	return uint32(us)
}

// Unmarshal reads a control packet and checks it as RFC 5880 §6.8.6 asks before any
// state is touched: version 1, a length that matches, a non-zero detect multiplier and
// My Discriminator, no multipoint, and no authentication (Herald's sessions use none).
func Unmarshal(b []byte) (Packet, error) {
	var p Packet
	if len(b) < packetLen {
		return p, ErrShort
	}
	if b[0]>>5 != 1 {
		return p, ErrVersion
	}
	if int(b[3]) < packetLen || int(b[3]) > len(b) {
		return p, ErrLength
	}
	p.Diag = Diag(b[0] & 0x1f)
	p.State = State(b[1] >> 6)
	p.Poll = b[1]&0x20 != 0
	p.Final = b[1]&0x10 != 0
	p.ControlPlaneIndep = b[1]&0x08 != 0
	p.Auth = b[1]&0x04 != 0
	p.Demand = b[1]&0x02 != 0
	p.Multipoint = b[1]&0x01 != 0
	p.DetectMult = b[2]
	p.MyDiscriminator = binary.BigEndian.Uint32(b[4:])
	p.YourDiscriminator = binary.BigEndian.Uint32(b[8:])
	p.DesiredMinTx = time.Duration(binary.BigEndian.Uint32(b[12:])) * time.Microsecond
	p.RequiredMinRx = time.Duration(binary.BigEndian.Uint32(b[16:])) * time.Microsecond
	p.RequiredMinEchoRx = time.Duration(binary.BigEndian.Uint32(b[20:])) * time.Microsecond
	switch {
	case p.Auth || p.Multipoint:
		return p, ErrUnsupported
	case p.Auth && int(b[3]) < packetLen+2, !p.Auth && int(b[3]) != packetLen:
		return p, ErrLength
	case p.DetectMult == 0, p.MyDiscriminator == 0:
		return p, ErrField
	case p.YourDiscriminator == 0 && p.State != Down && p.State != AdminDown:
		return p, ErrField
	}
	return p, nil
}
