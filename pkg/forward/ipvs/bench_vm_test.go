package ipvs_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/transport"
)

func manyServices(n int) []forward.Service {
	var out []forward.Service
	for i := range n {
		vip := netip.AddrFrom4([4]byte{192, 168, 10 + byte(i/250), byte(1 + i%250)})
		for _, port := range []uint16{80, 443} {
			s := forward.Service{VIP: vip, Port: port, Proto: transport.TCP, Masquerade: true}
			for r := range 10 {
				s.RealServers = append(s.RealServers, forward.RealServer{Addr: netip.AddrFrom4([4]byte{10, 0, byte(r), 1}), Port: 30000 + port})
			}
			out = append(out, s)
		}
	}
	return out
}

// BenchmarkProgram measures, on Debian's kernel in the VM (under qemu's software
// emulation, so slower than hardware): programming 1,000 addresses × 2 ports × 10 real
// servers from empty, then one incremental change (a real server leaves one service)
// with all of it in place, then the full comparison with the kernel that the speaker
// makes every resync period (nothing to change). It runs twice: through Linux
// ("netlink": many requests to a system call), and through moby/ipvs and one address at
// a time ("moby-ipvs": one round trip per change, as Herald did before).
//
// Each run starts in a network namespace of its own: the kernel keeps removed real
// servers in a per-namespace trash for two minutes and searches all of it for every real
// server added, so a run after another's teardown would measure that search (tens of
// seconds under emulation) rather than the programming. Run:
// go run ./hack/vm -bench Program -count 3 ./pkg/forward/ipvs
func BenchmarkProgram(b *testing.B) {
	if testing.Short() {
		b.Skip()
	}
	netlab.RequireVM(b)
	b.Run("netlink", func(b *testing.B) {
		program(b, func() (ipvs.Kernel, func(), error) {
			k, err := ipvs.OpenLinux()
			if err != nil {
				return nil, nil, err
			}
			return k, k.Close, nil
		})
	})
	b.Run("moby-ipvs", func(b *testing.B) {
		program(b, func() (ipvs.Kernel, func(), error) {
			k, err := ipvs.OpenLinux()
			if err != nil {
				return nil, nil, err
			}
			h, err := lvs.New("")
			if err != nil {
				k.Close()
				return nil, nil, err
			}
			return &mobyKernel{Linux: k, h: h}, func() { h.Close(); k.Close() }, nil
		})
	})
}

func program(b *testing.B, open func() (ipvs.Kernel, func(), error)) {
	wide := func(a netip.Addr) bool { return a.Is4() && a.As4()[0] == 192 && a.As4()[1] == 168 }
	for b.Loop() {
		inFreshNetns(b, func() error {
			k, closeK, err := open()
			if err != nil {
				return err
			}
			defer closeK()
			f, err := ipvs.New(k, ipvs.Options{Owns: wide})
			if err != nil {
				return err
			}
			defer f.Set(nil) //nolint:errcheck // the namespace goes anyway
			svcs := manyServices(1000)
			start := time.Now()
			if err := f.Set(svcs); err != nil {
				return err
			}
			full := time.Since(start)
			svcs[0].RealServers = svcs[0].RealServers[1:]
			start = time.Now()
			if err := f.Set(svcs); err != nil {
				return err
			}
			one := time.Since(start)
			f.Resync()
			start = time.Now()
			if err := f.Set(svcs); err != nil {
				return err
			}
			b.ReportMetric(full.Seconds(), "s-2000-services-from-empty")
			b.ReportMetric(float64(one.Milliseconds()), "ms-one-change")
			b.ReportMetric(time.Since(start).Seconds(), "s-full-resync")
			return nil
		})
	}
}

// inFreshNetns runs fn on a thread of its own in a new network namespace, which ends
// with the thread when fn returns.
func inFreshNetns(b *testing.B, fn func() error) {
	b.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread, and its namespace, go with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkConnections measures TCP connections per second from a client namespace
// through one VIP to two backends, 8 connections at a time for 3 seconds (bounded), on
// Debian's kernel under qemu's software emulation.
func BenchmarkConnections(b *testing.B) {
	netlab.RequireVM(b)
	client := host(b, 11)
	b12, b13 := host(b, 12), host(b, 13)
	serve(b, b12, 12, "b12")
	serve(b, b13, 13, "b13")
	f := newForwarder(b, linux(b), owns)
	if err := f.Set([]forward.Service{{VIP: netip.MustParseAddr("192.168.10.80"), Port: 8090, Proto: transport.TCP,
		RealServers: []forward.RealServer{rs("10.12.0.2", 30080, 1), rs("10.13.0.2", 30080, 1)}}}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var done atomic.Int64
		var failed atomic.Int64
		deadline := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					if _, _, err := tryAsk(client, "192.168.10.80:8090", time.Second); err != nil {
						failed.Add(1)
						continue
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
		b.ReportMetric(float64(done.Load())/3, "connections/s")
		b.ReportMetric(float64(failed.Load()), "failed")
	}
}
