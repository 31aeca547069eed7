package liveness

import (
	"bytes"
	"testing"
	"time"
)

var fuzzKey = bytes.Repeat([]byte{7}, keyLen)

// FuzzFrame: any bytes are a frame accepted, or refused with a reason; never a panic. A
// frame accepted is the one sealed, and any change to a sealed frame is refused.
func FuzzFrame(f *testing.F) {
	s := newSealer(fuzzKey)
	f.Add(s.seal(frameBeat, nil), uint(0))
	f.Add(s.seal(frameLeave, []byte("payload")), uint(12))
	f.Add([]byte{frameBeat, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff}, uint(3))
	f.Add([]byte{}, uint(0))
	f.Fuzz(func(t *testing.T, b []byte, flip uint) {
		o := newOpener(fuzzKey)
		if typ, payload, err := o.open(b); err == nil {
			// Only a frame this key sealed opens: seal it again and compare.
			again := newSealer(fuzzKey)
			if !bytes.Equal(again.seal(typ, payload), b) {
				t.Fatalf("%x opened as %d %x, which seals differently", b, typ, payload)
			}
		} else if dropReason(err) == 0 {
			t.Fatalf("%x refused without a reason: %v", b, err)
		}
		// Round trip, and a bit flipped anywhere is refused.
		if len(b) > maxPayload {
			b = b[:maxPayload]
		}
		frame := newSealer(fuzzKey).seal(frameAck, b)
		if _, got, err := newOpener(fuzzKey).open(frame); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round trip of %x: %x, %v", b, got, err)
		}
		bad := bytes.Clone(frame)
		i := int(flip % uint(8*len(bad)))
		bad[i/8] ^= 1 << (i % 8)
		if _, _, err := newOpener(fuzzKey).open(bad); err == nil {
			t.Fatalf("bit %d flipped in %x: accepted", i, frame)
		}
		// Read from a stream: the same verdict.
		if _, _, err := newOpener(fuzzKey).read(bytes.NewReader(frame)); err != nil {
			t.Fatalf("reading %x: %v", frame, err)
		}
	})
}

// FuzzMsg: any bytes are a memberlist message accepted or refused with a reason; an
// accepted one is what was sealed.
func FuzzMsg(f *testing.F) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	f.Add(sealMsg(fuzzKey, msg{kind: msgLeaving, from: "node-a", about: "node-a", at: at}))
	f.Add(sealMsg(fuzzKey, msg{kind: msgDead, from: "a", about: "b", at: 1}))
	f.Add([]byte{msgMagic, msgVersion, msgDead, 0, 200, 'x'})
	f.Add(encodeMsg(msg{kind: msgAck, from: "a", about: "b", at: at}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := openMsg(fuzzKey, b)
		if err != nil {
			if dropReason(err) == 0 {
				t.Fatalf("%x refused without a reason: %v", b, err)
			}
		} else if !bytes.Equal(sealMsg(fuzzKey, m), b) {
			t.Fatalf("%x opens as %+v, which seals differently", b, m)
		}
		if m, err := decodeMsg(b); err == nil && !bytes.Equal(encodeMsg(m), b) {
			t.Fatalf("%x decodes as %+v, which encodes differently", b, m)
		}
	})
}

// FuzzHandshakeField: the handshake's length-prefixed fields never allocate more than
// maxField bytes, and parse back what was written.
func FuzzHandshakeField(f *testing.F) {
	f.Add([]byte{0, 1, 'a', 0, 0, 0, 2, 'b', 'c'})
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readMsg(bytes.NewReader(b), 3)
		if err != nil {
			return
		}
		var w bytes.Buffer
		if err := writeMsg(&w, m...); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, w.Bytes()) {
			t.Fatalf("%x parsed as %q, which writes as %x", b, m, w.Bytes())
		}
	})
}
