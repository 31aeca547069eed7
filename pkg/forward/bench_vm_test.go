package forward

import (
	"net/netip"
	"testing"
	"time"
)

func manyServices(n int) []Service {
	var out []Service
	for i := range n {
		vip := netip.AddrFrom4([4]byte{192, 168, 10 + byte(i/250), byte(1 + i%250)})
		for _, port := range []uint16{80, 443} {
			s := Service{VIP: vip, Port: port, Proto: TCP, Masquerade: true}
			for r := range 10 {
				s.RealServers = append(s.RealServers, RealServer{Addr: netip.AddrFrom4([4]byte{10, 0, byte(r), 1}), Port: 30000 + port})
			}
			out = append(out, s)
		}
	}
	return out
}

// BenchmarkProgram measures, on Debian's kernel in the VM (under qemu's software
// emulation, so slower than hardware): programming 1,000 addresses × 2 ports × 10 real
// servers from empty, and then one incremental change (a real server leaves one service)
// with all of it in place. Run: go run ./hack/vm -bench Program ./pkg/forward
func BenchmarkProgram(b *testing.B) {
	if testing.Short() {
		b.Skip()
	}
	wide := func(a netip.Addr) bool { return a.Is4() && a.As4()[0] == 192 && a.As4()[1] == 168 }
	f, err := New(Options{Owns: wide})
	if err != nil {
		b.Skip("no IPVS here: ", err)
	}
	defer f.Close()
	svcs := manyServices(1000)
	for b.Loop() {
		if err := f.Set(nil); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := f.Set(svcs); err != nil {
			b.Fatal(err)
		}
		full := time.Since(start)
		svcs[0].RealServers = svcs[0].RealServers[1:]
		start = time.Now()
		if err := f.Set(svcs); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(full.Seconds(), "s-2000-services-from-empty")
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms-one-change")
		_ = f.Set(nil)
	}
}
