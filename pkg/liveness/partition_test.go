package liveness

import (
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cutProxy relays connections to target until cut: from then on every connection it
// holds, and every new one, is a black hole (nothing passes, nothing is closed), as on a
// link cut without either end knowing. Connections made after the heal relay again; those
// cut stay dead, as a connection whose other end closed meanwhile (its FIN lost) does
// until TCP gives up.
type cutProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	held   []net.Conn
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.held {
			c.Close()
		}
		p.mu.Unlock()
	})
	go p.serve()
	return p
}

func (p *cutProxy) hold(c net.Conn) {
	p.mu.Lock()
	p.held = append(p.held, c)
	p.mu.Unlock()
}

func (p *cutProxy) serve() {
	for {
		from, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.hold(from)
		if p.cut.Load() {
			go func() { _, _ = io.Copy(io.Discard, from) }()
			continue
		}
		to, err := net.Dial("tcp", p.target)
		if err != nil {
			from.Close()
			continue
		}
		p.hold(to)
		var severed atomic.Bool
		relay := func(dst, src net.Conn) {
			buf := make([]byte, 4096)
			for {
				n, err := src.Read(buf)
				if p.cut.Load() {
					severed.Store(true)
				}
				if err != nil {
					if !severed.Load() {
						dst.Close()
					}
					return
				}
				if !severed.Load() {
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
			}
		}
		go relay(to, from)
		go relay(from, to)
	}
}

// healedPartition starts a, b and c, with a reaching b and c only through cut proxies
// (it dials both: the lower name dials), cuts a off for cut, heals, and returns how long
// after the heal b and c both hear a again.
func healedPartition(t testing.TB, cut time.Duration) time.Duration {
	m := newMesh(t)
	b, c := m.start("b", key), m.start("c", key)
	pb, pc := newCutProxy(t, m.addrs["b"]), newCutProxy(t, m.addrs["c"])
	via := map[string]string{"b": pb.ln.Addr().String(), "c": pc.ln.Addr().String()}
	m.tweak = func(cfg *Config) {
		if cfg.Name == "a" {
			cfg.Peers = func() map[string]string { return via }
		}
	}
	a := m.start("a", key)
	m.connected("a", "b", "c")
	pb.cut.Store(true)
	pc.cut.Store(true)
	waitFor(t, 5*time.Second, "a dead at b and c", func() bool { return deadAs(b, "a") == Silent && deadAs(c, "a") == Silent })
	time.Sleep(cut)
	if r := deadAs(a, "b"); r != 0 {
		t.Fatalf("a, cut off, accused b (%s): it hears from no one", r)
	}
	pb.cut.Store(false)
	pc.cut.Store(false)
	return waitFor(t, 10*time.Second, "a heard again by b and c", func() bool {
		return deadAs(b, "a") == 0 && deadAs(c, "a") == 0
	})
}

// A speaker cut off, which held on to its stale connections (it heard from no one, so it
// accused no one), dials its peers again as soon as the link heals: it is not left to
// TCP's retransmissions, nor to the others, which do not dial it.
func TestHealedPartitionIsKnownAtOnce(t *testing.T) {
	took := healedPartition(t, time.Second)
	t.Logf("a heard again %s after the heal", took.Round(time.Millisecond))
}

// BenchmarkPartitionHeal measures, on loopback, how long after a cut-off speaker's link
// heals its peers hear it again (the time two nodes may answer for its addresses).
// go test ./pkg/liveness -run '^$' -bench PartitionHeal -benchtime 10x
func BenchmarkPartitionHeal(b *testing.B) {
	var took []time.Duration
	for b.Loop() {
		took = append(took, healedPartition(b, time.Second))
	}
	reportTimes(b, took)
}

func reportTimes(b *testing.B, took []time.Duration) {
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(took[0]), "ms-min")
	b.ReportMetric(ms(took[len(took)/2]), "ms-median")
	b.ReportMetric(ms(took[len(took)-1]), "ms-max")
}
