package bfd

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestPacketRoundTrip(t *testing.T) {
	p := Packet{
		Diag: DiagNeighborDown, State: Up, Poll: true, ControlPlaneIndep: true, DetectMult: 3,
		MyDiscriminator: 0xdeadbeef, YourDiscriminator: 7,
		DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond, RequiredMinEchoRx: 0,
	}
	b := p.Marshal()
	// As RFC 5880 §4.1 lays it out: version 1 and diag 3, state Up with the Poll and C bits.
	want := []byte{0x23, 0xe8, 3, 24, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7, 0, 0x01, 0x86, 0xa0, 0, 0x04, 0x93, 0xe0, 0, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("Marshal = % x\nwant      % x", b, want)
	}
	got, err := Unmarshal(b)
	if err != nil || got != p {
		t.Fatalf("Unmarshal = %+v, %v; want %+v", got, err, p)
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	good := Packet{State: Up, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2}.Marshal()
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good...)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"short", good[:23], ErrShort},
		{"version 0", mod(func(b []byte) []byte { b[0] &^= 0xe0; return b }), ErrVersion},
		{"length over the packet", mod(func(b []byte) []byte { b[3] = 30; return b }), ErrLength},
		{"length under 24", mod(func(b []byte) []byte { b[3] = 20; return b }), ErrLength},
		{"trailing bytes the length does not count", append(mod(func(b []byte) []byte { return b }), 0, 0), nil},
		{"length 26 without auth", append(mod(func(b []byte) []byte { b[3] = 26; return b }), 0, 0), ErrLength},
		{"detect multiplier 0", mod(func(b []byte) []byte { b[2] = 0; return b }), ErrField},
		{"my discriminator 0", mod(func(b []byte) []byte { copy(b[4:8], []byte{0, 0, 0, 0}); return b }), ErrField},
		{"your discriminator 0 while Up", mod(func(b []byte) []byte { copy(b[8:12], []byte{0, 0, 0, 0}); return b }), ErrField},
		{"your discriminator 0 while Down", mod(func(b []byte) []byte { copy(b[8:12], []byte{0, 0, 0, 0}); b[1] = byte(Down) << 6; return b }), nil},
		{"multipoint", mod(func(b []byte) []byte { b[1] |= 0x01; return b }), ErrUnsupported},
		{"authentication", append(mod(func(b []byte) []byte { b[1] |= 0x04; b[3] = 28; return b }), 1, 4, 0, 0), ErrUnsupported},
	} {
		_, err := Unmarshal(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

// Whatever arrives, Unmarshal does not panic, and what it accepts marshals back to the
// same 24 bytes.
func FuzzPacket(f *testing.F) {
	f.Add(Packet{State: Down, DetectMult: 3, MyDiscriminator: 1, DesiredMinTx: time.Second, RequiredMinRx: 300 * time.Millisecond}.Marshal())
	f.Add(Packet{State: Up, Final: true, DetectMult: 255, MyDiscriminator: 9, YourDiscriminator: 10}.Marshal())
	f.Add([]byte{0x20, 0xc0, 3, 24})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Unmarshal(b)
		if err != nil {
			return
		}
		if out := p.Marshal(); !bytes.Equal(out, b[:packetLen]) {
			t.Fatalf("% x read as %+v marshals to % x", b, p, out)
		}
	})
}

// BenchmarkPacket is one received packet's parse and the answer's marshal: what a
// session at 10 ms costs per packet.
func BenchmarkPacket(b *testing.B) {
	wire := Packet{State: Up, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}.Marshal()
	b.ReportAllocs()
	for b.Loop() {
		p, err := Unmarshal(wire)
		if err != nil {
			b.Fatal(err)
		}
		_ = p.Marshal()
	}
}
