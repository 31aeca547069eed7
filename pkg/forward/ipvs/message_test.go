package ipvs

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/transport"
)

// one returns the single netlink message in b: its type, flags, seq and payload.
func one(t *testing.T, b []byte) (typ, flags uint16, seq uint32, payload []byte) {
	t.Helper()
	n := 0
	if err := messages(b, func(ty, fl uint16, s uint32, p []byte) error {
		typ, flags, seq, payload = ty, fl, s, p
		n++
		return nil
	}); err != nil || n != 1 {
		t.Fatalf("%d messages, %v; want one", n, err)
	}
	return
}

// roundTrip encodes c as a request and reads its service and destination back as the
// parsers of the kernel's answers do.
func roundTrip(t *testing.T, c Change) {
	t.Helper()
	b, err := appendRequest([]byte{1, 2, 3, 4}, 0x1c, syscall.NLM_F_REQUEST|syscall.NLM_F_ACK, 77, c)
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	b = b[4:]
	if len(b)%4 != 0 || int(binary.NativeEndian.Uint32(b)) != len(b) {
		t.Fatalf("%s: message of %d bytes says %d", c, len(b), binary.NativeEndian.Uint32(b))
	}
	typ, flags, seq, payload := one(t, b)
	if typ != 0x1c || flags != syscall.NLM_F_REQUEST|syscall.NLM_F_ACK || seq != 77 {
		t.Errorf("%s: header type %#x flags %#x seq %d", c, typ, flags, seq)
	}
	wantCmd := map[Op]uint8{OpAddService: cmdNewService, OpUpdateService: cmdSetService, OpDelService: cmdDelService,
		OpAddDestination: cmdNewDest, OpUpdateDestination: cmdSetDest, OpDelDestination: cmdDelDest}[c.Op]
	if payload[0] != wantCmd || payload[1] != genlVersion {
		t.Errorf("%s: command %d version %d, want %d %d", c, payload[0], payload[1], wantCmd, genlVersion)
	}
	v, err := parseService(payload)
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	want := VirtualService{Key: c.Service.Key}
	if c.Op == OpAddService || c.Op == OpUpdateService {
		want.Scheduler, want.Persistence = c.Service.Scheduler, c.Service.Persistence.Truncate(time.Second)
	}
	if v != want {
		t.Errorf("%s: service read back %+v, want %+v", c, v, want)
	}
	af := uint16(syscall.AF_INET)
	if c.Service.Key.VIP.Is6() {
		af = syscall.AF_INET6
	}
	d, err := parseDest(payload, af)
	if c.Op < OpAddDestination {
		if err == nil {
			t.Errorf("%s: a destination in a service change: %+v", c, d)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	wantD := Destination{Addr: c.Dest.Addr, Port: c.Dest.Port}
	if c.Op != OpDelDestination {
		wantD.Weight = max(c.Dest.Weight, 1)
	}
	if d != wantD {
		t.Errorf("%s: destination read back %+v, want %+v", c, d, wantD)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	v4 := VirtualService{Key: forward.Key{VIP: netip.MustParseAddr("192.168.10.1"), Port: 443, Proto: transport.TCP}, Scheduler: "wrr", Persistence: 3 * time.Hour}
	v6 := VirtualService{Key: forward.Key{VIP: netip.MustParseAddr("fd10::1"), Port: 53, Proto: transport.UDP}, Scheduler: "mh"}
	d4 := Destination{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30080, Weight: 7}
	d6 := Destination{Addr: netip.MustParseAddr("fd44::1"), Port: 1, Weight: 0}
	for op := OpAddService; op <= OpDelDestination; op++ {
		roundTrip(t, Change{Op: op, Service: v4, Dest: d4})
		roundTrip(t, Change{Op: op, Service: v6, Dest: d6})
	}
}

// A change the kernel could not make sense of is refused before it is sent.
func TestRequestRefused(t *testing.T) {
	v4 := VirtualService{Key: forward.Key{VIP: netip.MustParseAddr("192.168.10.1"), Port: 443, Proto: transport.TCP}, Scheduler: "rr"}
	for name, c := range map[string]Change{
		"unknown op":       {Op: 99, Service: v4},
		"no address":       {Op: OpAddService},
		"mixed families":   {Op: OpAddDestination, Service: v4, Dest: Destination{Addr: netip.MustParseAddr("fd44::1"), Port: 1}},
		"no real server":   {Op: OpDelDestination, Service: v4},
		"unknown op again": {Op: 0, Service: v4},
	} {
		if b, err := appendRequest(nil, 0x1c, 0, 1, c); err == nil || len(b) != 0 {
			t.Errorf("%s: %d bytes, error %v; want a refusal", name, len(b), err)
		}
	}
}

func FuzzRequestRoundTrip(f *testing.F) {
	f.Add([]byte{192, 168, 10, 1}, uint16(80), uint8(6), "rr", uint32(0), []byte{10, 0, 0, 1}, uint16(30080), 1, uint8(1))
	f.Add([]byte{0xfd, 0x10, 15: 1}, uint16(53), uint8(17), "sh", uint32(3600), []byte{0xfd, 0x44, 15: 2}, uint16(1), 0, uint8(4))
	f.Fuzz(func(t *testing.T, vip []byte, port uint16, proto uint8, sched string, persist uint32, rsAddr []byte, rsPort uint16, weight int, op uint8) {
		a, ok1 := netip.AddrFromSlice(vip)
		r, ok2 := netip.AddrFromSlice(rsAddr)
		c := Change{Op: Op(op%6 + 1), Service: VirtualService{Key: forward.Key{VIP: a, Port: port, Proto: transport.Protocol(proto)},
			Scheduler: sched, Persistence: time.Duration(persist) * time.Second}, Dest: Destination{Addr: r, Port: rsPort, Weight: weight}}
		if !ok1 || !ok2 || a.Is4() != r.Is4() || strings.ContainsRune(sched, 0) || len(sched) > 1000 || weight < 0 || weight > 1<<30 {
			if _, err := appendRequest(nil, 1, 0, 1, c); err == nil && (!ok1 || (c.Op >= OpAddDestination && (!ok2 || a.Is4() != r.Is4()))) {
				t.Errorf("%s: encoded without an error", c)
			}
			return
		}
		roundTrip(t, c)
	})
}

// The parsers of the kernel's answers take any bytes without panicking or looping.
func FuzzParse(f *testing.F) {
	b, _ := appendRequest(nil, 0x1c, 0, 1, Change{Op: OpAddDestination,
		Service: VirtualService{Key: forward.Key{VIP: netip.MustParseAddr("192.168.10.1"), Port: 80, Proto: transport.TCP}},
		Dest:    Destination{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30080, Weight: 1}})
	f.Add(b)
	f.Add(appendDump(nil, 0x1c, 2, forward.Key{}))
	f.Add(appendAddrRequest(nil, unix.RTM_NEWADDR, 0, 3, 1, netip.MustParseAddr("fd10::1")))
	f.Add([]byte{20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = messages(b, func(_, _ uint16, _ uint32, p []byte) error {
			_, _ = parseService(p)
			_, _ = parseDest(p, syscall.AF_INET)
			_, _ = parseDest(p, syscall.AF_INET6)
			_ = errnoOf(p)
			return nil
		})
	})
}

func TestAddrRequest(t *testing.T) {
	for _, a := range []netip.Addr{netip.MustParseAddr("192.168.10.7"), netip.MustParseAddr("fd10::7")} {
		typ, flags, seq, p := one(t, appendAddrRequest(nil, unix.RTM_NEWADDR, unix.NLM_F_REQUEST|unix.NLM_F_CREATE, 9, 42, a))
		if typ != unix.RTM_NEWADDR || flags != unix.NLM_F_REQUEST|unix.NLM_F_CREATE || seq != 9 || len(p) < 8 {
			t.Fatalf("%s: header %d %#x %d, payload %d bytes", a, typ, flags, seq, len(p))
		}
		wantFam, wantFlags := byte(unix.AF_INET), byte(0)
		if a.Is6() {
			wantFam, wantFlags = unix.AF_INET6, unix.IFA_F_NODAD
		}
		if p[0] != wantFam || int(p[1]) != a.BitLen() || p[2] != wantFlags || p[3] != 0 || binary.NativeEndian.Uint32(p[4:]) != 42 {
			t.Errorf("%s: ifaddrmsg % x", a, p[:8])
		}
		got := map[uint16]netip.Addr{}
		if err := attrs(p[8:], func(typ uint16, v []byte) error {
			got[typ], _ = netip.AddrFromSlice(v)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got[unix.IFA_LOCAL] != a || got[unix.IFA_ADDRESS] != a || len(got) != 2 {
			t.Errorf("%s: attributes %v", a, got)
		}
	}
}

// The batching against a real kernel, on any machine: thousands of addresses added to
// and removed from the loopback link of a network namespace of the test's own, in
// several batches, with the kernel's refusals (an address already there, or already
// gone) pinned on exactly the requests they answer.
func TestBatchErrorsInOrder(t *testing.T) {
	if unix.Geteuid() != 0 {
		t.Skip("needs root, for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread enters a namespace of its own and is never unlocked: it ends with
		// the goroutine, and the namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		c, err := dial(unix.NETLINK_ROUTE)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.close()
		addrs := make([]netip.Addr, 3000) // 40 bytes each: three batches
		for i := range addrs {
			addrs[i] = netip.AddrFrom4([4]byte{10, 77, byte(i >> 8), byte(i)})
		}
		do := func(typ, flags uint16, as []netip.Addr) []error {
			return c.do(len(as), func(b []byte, i int, f uint16, seq uint32) ([]byte, error) {
				return appendAddrRequest(b, typ, f|flags, seq, 1, as[i]), nil
			})
		}
		if errs := do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, addrs[:2000]); errs != nil {
			t.Errorf("adding 2,000 addresses: %v", errors.Join(errs...))
		}
		check := func(step string, errs []error, refused func(i int) bool, want syscall.Errno) {
			for i := range addrs {
				var err error
				if errs != nil {
					err = errs[i]
				}
				if r := refused(i); (r && !errors.Is(err, want)) || (!r && err != nil) {
					t.Errorf("%s: %s answered %v (refused: %v)", step, addrs[i], err, r)
					return
				}
			}
		}
		errs := do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, addrs)
		check("adding all", errs, func(i int) bool { return i < 2000 }, unix.EEXIST)
		errs = do(unix.RTM_DELADDR, 0, addrs)
		check("removing all", errs, func(int) bool { return false }, 0)
		errs = do(unix.RTM_DELADDR, 0, addrs)
		check("removing again", errs, func(int) bool { return true }, unix.EADDRNOTAVAIL)
		if t.Failed() {
			return
		}
		// A dump on the same socket after the batches finds the link alone: no stale
		// answer confuses it.
		n := 0
		err = c.dump(func(seq uint32) []byte {
			b := binary.NativeEndian.AppendUint32(nil, 32)
			b = binary.NativeEndian.AppendUint16(b, unix.RTM_GETLINK)
			b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
			b = binary.NativeEndian.AppendUint32(b, seq)
			return append(binary.NativeEndian.AppendUint32(b, 0), make([]byte, 16)...)
		}, func([]byte) error { n++; return nil })
		if err != nil || n != 1 {
			t.Errorf("link dump: %d links, %v; want lo alone", n, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("no answer within a minute")
	}
}
