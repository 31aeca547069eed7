package liveness

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"time"
)

// Every message between two speakers is authenticated and fresh. The handshake binds both
// nonces and both names; from it each end derives, with HKDF from the gossip key, a key per
// direction. Every frame after it carries a per-direction counter and a MAC under that
// direction's key: a frame forged without the key, replayed (on this connection or from an
// older one, whose keys differ), reordered, cut short or altered fails, is counted by
// Drop, and closes the connection.

// Drop says why a message was refused.
type Drop uint8

// The reasons a message is refused.
const (
	DropMAC       Drop = iota + 1 // its MAC does not verify: altered, or made without the key
	DropReplay                    // its counter or timestamp is not newer than the last accepted
	DropOversize                  // it announces more bytes than any message holds
	DropType                      // a type or kind this speaker does not know
	DropTruncated                 // the connection ended inside it
	DropMalformed                 // it does not parse
	DropStale                     // a memberlist message older (or newer) than the freshness window
	DropHandshake                 // a connection that did not prove the gossip key
	DropLimit                     // a connection over the limit of inbound connections or handshakes
	DropSender                    // a message about another speaker than the one allowed (a leave not from the leaver)
)

func (d Drop) String() string {
	switch d {
	case DropMAC:
		return "mac"
	case DropReplay:
		return "replay"
	case DropOversize:
		return "oversize"
	case DropType:
		return "type"
	case DropTruncated:
		return "truncated"
	case DropMalformed:
		return "malformed"
	case DropStale:
		return "stale"
	case DropHandshake:
		return "handshake"
	case DropLimit:
		return "limit"
	case DropSender:
		return "sender"
	}
	return fmt.Sprintf("Drop(%d)", uint8(d))
}

// dropError is a refused message and why.
type dropError struct {
	why Drop
	msg string
}

func (e *dropError) Error() string { return e.why.String() + ": " + e.msg }

func drop(why Drop, format string, args ...any) error {
	return &dropError{why, fmt.Sprintf(format, args...)}
}

// dropReason returns why err refused a message, 0 if it did not.
func dropReason(err error) Drop {
	var d *dropError
	if errors.As(err, &d) {
		return d.why
	}
	return 0
}

// Frame types on a connection.
const (
	frameBeat  = 1
	frameLeave = 2
	frameAck   = 3
	frameBye   = 4 // the connection closes, and that is no death (no longer neighbours)
)

// A frame: type (1), counter (8), payload length (2), payload, MAC (macLen) of all before
// it under the direction's key. No frame type has a payload yet; up to maxPayload bytes
// are read (and authenticated) so that a later version may add one.
const (
	frameHeader = 1 + 8 + 2
	macLen      = 16 // HMAC-SHA256, truncated
	maxPayload  = 64
	keyLen      = 32
)

// sealer writes one direction's frames.
type sealer struct {
	mac hash.Hash
	n   uint64 // counter of the last frame sealed
}

func newSealer(key []byte) *sealer { return &sealer{mac: hmac.New(sha256.New, key)} }

// seal returns the next frame of type typ.
func (s *sealer) seal(typ byte, payload []byte) []byte {
	s.n++
	b := make([]byte, 0, frameHeader+len(payload)+macLen)
	b = append(b, typ)
	b = binary.BigEndian.AppendUint64(b, s.n)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	b = append(b, payload...)
	s.mac.Reset()
	s.mac.Write(b)
	return s.mac.Sum(b)[:len(b)+macLen]
}

// opener checks one direction's frames.
type opener struct {
	mac hash.Hash
	n   uint64 // counter of the last frame accepted
	buf [frameHeader + maxPayload + macLen]byte
}

func newOpener(key []byte) *opener { return &opener{mac: hmac.New(sha256.New, key)} }

// read reads the next frame from r and returns its type and payload (valid until the
// next read). io.EOF means the connection ended between frames; a *dropError, a frame
// refused.
func (o *opener) read(r io.Reader) (byte, []byte, error) {
	h := o.buf[:frameHeader]
	if n, err := io.ReadFull(r, h); err != nil {
		if n > 0 && (errors.Is(err, io.ErrUnexpectedEOF)) {
			return 0, nil, drop(DropTruncated, "%d bytes of a frame header", n)
		}
		return 0, nil, err
	}
	size := int(binary.BigEndian.Uint16(h[9:]))
	if size > maxPayload {
		return 0, nil, drop(DropOversize, "a frame of %d bytes, at most %d", size, maxPayload)
	}
	rest := o.buf[frameHeader : frameHeader+size+macLen]
	if _, err := io.ReadFull(r, rest); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return 0, nil, drop(DropTruncated, "a frame of %d bytes cut short", size)
		}
		return 0, nil, err
	}
	return o.open(o.buf[:frameHeader+size+macLen])
}

// open checks a whole frame b (header, payload and MAC).
func (o *opener) open(b []byte) (byte, []byte, error) {
	if len(b) < frameHeader+macLen {
		return 0, nil, drop(DropTruncated, "a frame of %d bytes", len(b))
	}
	size := int(binary.BigEndian.Uint16(b[9:]))
	if size > maxPayload {
		return 0, nil, drop(DropOversize, "a frame of %d bytes, at most %d", size, maxPayload)
	}
	if len(b) != frameHeader+size+macLen {
		return 0, nil, drop(DropMalformed, "a frame of %d bytes announcing %d", len(b), size)
	}
	body := b[:frameHeader+size]
	o.mac.Reset()
	o.mac.Write(body)
	var sum [sha256.Size]byte
	if !hmac.Equal(o.mac.Sum(sum[:0])[:macLen], b[len(body):]) {
		return 0, nil, drop(DropMAC, "frame MAC does not verify")
	}
	if n := binary.BigEndian.Uint64(b[1:]); n != o.n+1 {
		return 0, nil, drop(DropReplay, "frame %d after %d", n, o.n)
	}
	o.n++
	typ := b[0]
	if typ < frameBeat || typ > frameBye {
		return 0, nil, drop(DropType, "frame type %d", typ)
	}
	return typ, b[frameHeader:len(body)], nil
}

// session is what a handshake yields: who dialled, and each direction's keys.
type session struct {
	dialler string // the name of the speaker that dialled
	out     *sealer
	in      *opener
}

// The handshake: the dialler sends a version, its name and a nonce; the listener answers
// with its name, a nonce and a MAC over the transcript (both names, both nonces); the
// dialler answers with its own MAC over it. Keys: HKDF-SHA256 of the gossip key, salted
// with both nonces, with the transcript as context, split into the listener's and the
// dialler's handshake keys and the two directions' frame keys.
const (
	nonceLen         = 32
	handshakeVersion = "herald-liveness-2"
	maxField         = 256
)

type keys struct {
	listenerMAC, diallerMAC, toListener, toDialler []byte
}

func transcript(dialler string, dn []byte, listener string, ln []byte) string {
	var b []byte
	for _, p := range [][]byte{[]byte(handshakeVersion), []byte(dialler), dn, []byte(listener), ln} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	return string(b)
}

func deriveKeys(secret []byte, dialler string, dn []byte, listener string, ln []byte) keys {
	salt := append(append([]byte{}, dn...), ln...)
	k, err := hkdf.Key(sha256.New, secret, salt, transcript(dialler, dn, listener, ln), 4*keyLen)
	if err != nil {
		panic(err) // only for a length beyond 255 hashes
	}
	return keys{k[:keyLen], k[keyLen : 2*keyLen], k[2*keyLen : 3*keyLen], k[3*keyLen:]}
}

func handshakeMAC(key []byte, dialler string, dn []byte, listener string, ln []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(transcript(dialler, dn, listener, ln)))
	return h.Sum(nil)
}

func writeMsg(w io.Writer, parts ...[]byte) error {
	var b []byte
	for _, p := range parts {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	_, err := w.Write(b)
	return err
}

func readMsg(r io.Reader, n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return nil, err
		}
		size := binary.BigEndian.Uint16(l[:])
		if size > maxField {
			return nil, drop(DropOversize, "handshake field of %d bytes", size)
		}
		out[i] = make([]byte, size)
		if _, err := io.ReadFull(r, out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func nonce() []byte {
	b := make([]byte, nonceLen)
	_, _ = rand.Read(b)
	return b
}

// dialHandshake runs the dialler's side over conn, as self, with the peer expected to be
// name, within timeout.
func dialHandshake(conn net.Conn, secret []byte, self, name string, timeout time.Duration) (*session, error) {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	mine := nonce()
	if err := writeMsg(conn, []byte(handshakeVersion), []byte(self), mine); err != nil {
		return nil, err
	}
	m, err := readMsg(conn, 3)
	if err != nil {
		return nil, err
	}
	if string(m[0]) != name {
		return nil, drop(DropHandshake, "%s answers as %q", name, m[0])
	}
	if len(m[1]) != nonceLen {
		return nil, drop(DropHandshake, "%s sent a nonce of %d bytes", name, len(m[1]))
	}
	k := deriveKeys(secret, self, mine, name, m[1])
	if !hmac.Equal(m[2], handshakeMAC(k.listenerMAC, self, mine, name, m[1])) {
		return nil, drop(DropHandshake, "%s does not hold the gossip key", name)
	}
	if err := writeMsg(conn, handshakeMAC(k.diallerMAC, self, mine, name, m[1])); err != nil {
		return nil, err
	}
	return &session{dialler: self, out: newSealer(k.toListener), in: newOpener(k.toDialler)}, nil
}

// answerHandshake runs the listener's side over conn, as self, and returns the
// dialler's name once it proved the key.
func answerHandshake(conn net.Conn, secret []byte, self string, timeout time.Duration) (string, *session, error) {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	m, err := readMsg(conn, 3)
	if err != nil {
		return "", nil, err
	}
	if string(m[0]) != handshakeVersion {
		return "", nil, drop(DropHandshake, "handshake version %q, want %q", m[0], handshakeVersion)
	}
	name, theirs := string(m[1]), m[2]
	if name == self || name == "" {
		return "", nil, drop(DropHandshake, "a peer named %q", name)
	}
	if len(theirs) != nonceLen {
		return "", nil, drop(DropHandshake, "%q sent a nonce of %d bytes", name, len(theirs))
	}
	mine := nonce()
	k := deriveKeys(secret, name, theirs, self, mine)
	if err := writeMsg(conn, []byte(self), mine, handshakeMAC(k.listenerMAC, name, theirs, self, mine)); err != nil {
		return "", nil, err
	}
	proof, err := readMsg(conn, 1)
	if err != nil {
		return "", nil, err
	}
	if !hmac.Equal(proof[0], handshakeMAC(k.diallerMAC, name, theirs, self, mine)) {
		return "", nil, drop(DropHandshake, "%q does not hold the gossip key", name)
	}
	return name, &session{dialler: name, out: newSealer(k.toDialler), in: newOpener(k.toListener)}, nil
}
