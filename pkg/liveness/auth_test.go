package liveness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func dropped(d *Detector, why Drop) float64 {
	return testutil.ToFloat64(d.metrics.Dropped.WithLabelValues(why.String()))
}

// stillAlive checks, for a while, that d holds name neither dead nor gone.
func stillAlive(t *testing.T, d *Detector, name string, for_ time.Duration) {
	t.Helper()
	for end := time.Now().Add(for_); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if r := deadAs(d, name); r != 0 {
			t.Fatalf("%s found dead (%s)", name, r)
		}
	}
}

func TestNewRefusesNoKeyAndShortKeys(t *testing.T) {
	base := Config{Name: "a", Listen: "127.0.0.1:0", Peers: func() map[string]string { return nil }}
	for name, k := range map[string][]byte{"empty": nil, "short": []byte("0123456789")} {
		t.Run(name, func(t *testing.T) {
			cfg := base
			cfg.Key = k
			_, err := New(cfg)
			if err == nil {
				t.Fatalf("a key of %d bytes accepted", len(k))
			}
			if (len(k) == 0) != errors.Is(err, ErrNoKey) {
				t.Errorf("error %v", err)
			}
		})
	}
}

// Connections that do not prove the key — another key, the empty key the detector used to
// accept, a peer that sends nothing or garbage — are refused and counted; nothing changes.
func TestHandshakeWithoutTheKeyIsRefused(t *testing.T) {
	m := newMesh(t)
	a, b := m.start("a", key), m.start("b", key)
	m.connected("a", "b")
	for _, tc := range []struct {
		name string
		try  func(conn net.Conn) error
	}{
		{"wrong key", func(c net.Conn) error {
			_, err := dialHandshake(c, []byte("another key 1234"), "a", "b", time.Second)
			return err
		}},
		{"empty key", func(c net.Conn) error {
			_, err := dialHandshake(c, nil, "a", "b", time.Second)
			return err
		}},
		{"old version", func(c net.Conn) error {
			if err := writeMsg(c, []byte("a"), nonce()); err != nil {
				return err
			}
			_, err := readMsg(c, 3)
			return err
		}},
		{"oversize field", func(c net.Conn) error {
			if _, err := c.Write([]byte{0xff, 0xff, 1, 2, 3}); err != nil {
				return err
			}
			_, err := readMsg(c, 3)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := dropped(b, DropHandshake) + dropped(b, DropOversize)
			conn, err := net.Dial("tcp", m.addrs["b"])
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if err := tc.try(conn); err == nil {
				t.Fatal("the handshake succeeded")
			}
			waitFor(t, time.Second, "the refusal counted", func() bool {
				return dropped(b, DropHandshake)+dropped(b, DropOversize) > before
			})
			stillAlive(t, b, "a", 2*DefaultTimeout)
			if got := b.Peers(); len(got) != 1 || got[0] != "a" {
				t.Errorf("b's peers %v, want [a]", got)
			}
		})
	}
	_ = a
}

// An impostor listening where a peer should be, without the key, is not believed: the
// dialler refuses it.
func TestImpostorListenerIsRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _, _ = answerHandshake(c, []byte("not the key 1234"), "b", time.Second)
			}()
		}
	}()
	m := newMesh(t)
	m.mu.Lock()
	m.addrs["b"] = ln.Addr().String()
	m.version++
	m.mu.Unlock()
	a := m.start("a", key)
	waitFor(t, 2*time.Second, "the impostor refused", func() bool { return dropped(a, DropHandshake) > 0 })
	if p := a.Peers(); len(p) != 0 {
		t.Errorf("a connected to %v", p)
	}
}

// proxy relays a's connections to b, and lets a test inject bytes into the a→b stream
// between frames, as someone on the path could.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string
	mu     sync.Mutex
	frames [][]byte // every a→b frame relayed, of every connection
	conns  int
	inject chan func(w io.Writer, frames [][]byte) bool // true: close after
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target, inject: make(chan func(io.Writer, [][]byte) bool, 1)}
	t.Cleanup(func() { ln.Close() })
	go p.serve()
	return p
}

func (p *proxy) serve() {
	for {
		from, err := p.ln.Accept()
		if err != nil {
			return
		}
		to, err := net.Dial("tcp", p.target)
		if err != nil {
			from.Close()
			continue
		}
		p.mu.Lock()
		p.conns++
		p.mu.Unlock()
		go func() { _, _ = io.Copy(from, to); from.Close(); to.Close() }()
		go p.relay(from, to)
	}
}

// relay copies the handshake, then frame by frame (no frame has a payload yet).
func (p *proxy) relay(from, to net.Conn) {
	defer from.Close()
	defer to.Close()
	for _, n := range []int{3, 1} {
		m, err := readMsg(from, n)
		if err != nil {
			return
		}
		if err := writeMsg(to, m...); err != nil {
			return
		}
	}
	for {
		f := make([]byte, frameHeader+macLen)
		if _, err := io.ReadFull(from, f); err != nil {
			return
		}
		select {
		case inject := <-p.inject:
			p.mu.Lock()
			frames := append([][]byte(nil), p.frames...)
			p.mu.Unlock()
			if inject(to, frames) {
				return
			}
		default:
		}
		p.mu.Lock()
		p.frames = append(p.frames, f)
		p.mu.Unlock()
		if _, err := to.Write(f); err != nil {
			return
		}
	}
}

// Frames forged, replayed, altered, cut short or too long are dropped and counted, close
// the connection, and make no one dead: the peer connects again.
func TestBadFramesAreDroppedAndCounted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		why    Drop
		inject func(w io.Writer, frames [][]byte) bool
	}{
		{"replayed", DropReplay, func(w io.Writer, f [][]byte) bool {
			_, _ = w.Write(f[len(f)-2])
			return false
		}},
		{"from an earlier connection", DropMAC, func(w io.Writer, f [][]byte) bool {
			_, _ = w.Write(f[0]) // the first connection's first frame; its keys were others
			return false
		}},
		{"bit flipped", DropMAC, func(w io.Writer, f [][]byte) bool {
			g := bytes.Clone(f[len(f)-1])
			g[1+7]++ // the next counter, as if the next frame, with the old MAC
			_, _ = w.Write(g)
			return false
		}},
		{"truncated", DropTruncated, func(w io.Writer, f [][]byte) bool {
			_, _ = w.Write(f[len(f)-1][:frameHeader+3])
			return true
		}},
		{"oversize", DropOversize, func(w io.Writer, f [][]byte) bool {
			_, _ = w.Write([]byte{frameLeave, 0, 0, 0, 0, 0, 0, 0, 9, 0xff, 0xff})
			return false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			b := m.start("b", key)
			px := newProxy(t, m.addrs["b"])
			// a reaches b through the proxy.
			via := px.ln.Addr().String()
			m.tweak = func(c *Config) {
				if c.Name == "a" {
					c.Peers = func() map[string]string { return map[string]string{"b": via} }
				}
			}
			a := m.start("a", key)
			waitFor(t, 5*time.Second, "a and b connected", func() bool { return len(a.Peers()) == 1 && len(b.Peers()) == 1 })
			if tc.why == DropMAC && tc.name != "bit flipped" {
				// A second connection, whose keys differ from the first's (once the first
				// carried frames).
				time.Sleep(3 * DefaultInterval)
				px.inject <- func(io.Writer, [][]byte) bool { return true }
				waitFor(t, 5*time.Second, "a second connection", func() bool {
					px.mu.Lock()
					defer px.mu.Unlock()
					return px.conns >= 2
				})
				waitFor(t, 5*time.Second, "a and b connected again", func() bool { return len(b.Peers()) == 1 })
			}
			time.Sleep(3 * DefaultInterval) // frames to replay
			px.inject <- tc.inject
			for end := time.Now().Add(2 * time.Second); dropped(b, tc.why) == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(end) {
					px.mu.Lock()
					t.Fatalf("not dropped for %s; %d connections; drops: replay %v mac %v truncated %v", tc.why, px.conns, dropped(b, DropReplay), dropped(b, DropMAC), dropped(b, DropTruncated))
				}
			}
			stillAlive(t, b, "a", 2*DefaultTimeout)
			stillAlive(t, a, "b", 0)
			waitFor(t, 5*time.Second, "a and b connected again", func() bool { return len(a.Peers()) == 1 && len(b.Peers()) == 1 })
		})
	}
}

// A peer that holds the key but sends a frame of a type this speaker does not know: the
// frame is dropped and counted; no death.
func TestUnknownFrameTypeIsDropped(t *testing.T) {
	m := newMesh(t)
	b := m.start("b", key)
	conn, err := net.Dial("tcp", m.addrs["b"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sess, err := dialHandshake(conn, key, "a", "b", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(sess.out.seal(frameBeat, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(sess.out.seal(9, nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "the frame dropped", func() bool { return dropped(b, DropType) == 1 })
	// The connection is closed: read returns EOF (or a reset).
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 64)); err == nil {
		t.Error("the connection stayed open")
	}
}

// Beyond its limits, the listener closes new connections at once; the peers still get in
// once the unauthenticated ones have timed out.
func TestInboundConnectionsAreBounded(t *testing.T) {
	m := newMesh(t)
	m.tweak = func(c *Config) { c.MaxHandshakes = 4 }
	b := m.start("b", key)
	var idle []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", m.addrs["b"])
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
		defer c.Close()
	}
	// b has no peers yet: every one is a stranger, and strangers get a quarter of the
	// handshakes (1 of 4).
	waitFor(t, time.Second, "9 over the limit", func() bool { return dropped(b, DropLimit) == 9 })
	// The idle ones are closed after the handshake's deadline.
	for _, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("an unauthenticated connection held beyond the handshake's deadline")
		}
	}
	m.start("a", key)
	waitFor(t, 5*time.Second, "a connected", func() bool { return len(b.Peers()) == 1 })
}

// A leave through memberlist counts only from the leaver, authenticated and fresh: a
// forged one (another key), one by another speaker, a replay and a stale one change
// nothing; the leaver's own does.
func TestRelayedLeaveMustBeAuthenticAndFresh(t *testing.T) {
	m, names := ringMesh(t, 8)
	leaver := names[0]
	var far string // a speaker beyond the leaver's ring
	for _, nm := range names[1:] {
		if !ring(leaver, names, 4, 2)[nm] {
			far = nm
			break
		}
	}
	d := m.dets[far]
	real := m.dets[leaver].seal(msgLeaving, leaver)
	forger, err := New(Config{Name: names[1], Listen: "127.0.0.1:0", Key: []byte("not the key at all"), Peers: func() map[string]string { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	forged := sealMsg(forger.msgKey, msg{kind: msgLeaving, from: leaver, about: leaver, at: time.Now().UnixNano()})
	stale := sealMsg(d.msgKey, msg{kind: msgLeaving, from: leaver, about: leaver, at: time.Now().Add(-time.Minute).UnixNano()})
	other := m.dets[names[1]].seal(msgLeaving, leaver)
	for _, tc := range []struct {
		name string
		msg  []byte
		why  Drop
	}{
		{"forged", forged, DropMAC},
		{"stale", stale, DropStale},
		{"about another", other, DropSender},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d.Deliver(context.Background(), tc.msg)
			if r := deadAs(d, leaver); r != 0 {
				t.Fatalf("%s found %s dead (%s)", far, leaver, r)
			}
		})
	}
	for _, why := range []Drop{DropMAC, DropStale, DropSender} {
		if got := dropped(d, why); got != 1 {
			t.Errorf("%s drops: %v, want 1", why, got)
		}
	}
	// The leaver's own: taken.
	d.Deliver(context.Background(), real)
	if r := deadAs(d, leaver); r != Left {
		t.Fatalf("the leaver's own leave: %s holds it %v", far, r)
	}
	// It was not leaving after all (it is back, proven on a connection): a replay of its
	// leave changes nothing.
	waitFor(t, 3*time.Second, "the leaver back", func() bool { return deadAs(d, leaver) == 0 })
	d.Deliver(context.Background(), real)
	if r := deadAs(d, leaver); r != 0 {
		t.Fatalf("a replayed leave believed: %s", r)
	}
	if got := dropped(d, DropReplay); got != 1 {
		t.Errorf("replays dropped: %v, want 1", got)
	}
}

// A leave on a connection counts (the leaver's own, authenticated); the same bytes
// replayed on a later connection are refused (TestBadFramesAreDroppedAndCounted: a frame
// of an earlier connection fails its MAC).

// Dial errors: only a refusal is the peer's; this node's own errors say nothing; an
// unanswered dial is to be tried again.
func TestJudgeDial(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	for _, tc := range []struct {
		err  error
		want verdict
	}{
		{op(syscall.ECONNREFUSED), refused},
		{op(syscall.EMFILE), local},
		{op(syscall.ENFILE), local},
		{op(syscall.ENOBUFS), local},
		{op(syscall.EADDRNOTAVAIL), local},
		{op(syscall.ENETUNREACH), local},
		{op(syscall.ENETDOWN), local},
		{op(syscall.EHOSTUNREACH), unanswered},
		{op(syscall.ETIMEDOUT), unanswered},
		{&net.OpError{Op: "dial", Err: context.DeadlineExceeded}, unanswered},
		{os.ErrDeadlineExceeded, unanswered},
		{context.Canceled, local},
	} {
		if got := judgeDial(tc.err); got != tc.want {
			t.Errorf("%v: %d, want %d", tc.err, got, tc.want)
		}
	}
}

// A report of a death is checked with more than one dial over the whole timeout: one lost
// SYN (a dial unanswered once) is no death, nor is a dial that fails on this node.
func TestLostSYNAndLocalErrorsAreNoDeath(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(n int) error // the n-th dial's (from 0) error, nil to dial
	}{
		{"one lost SYN", func(n int) error {
			if n == 0 {
				return context.DeadlineExceeded
			}
			return nil
		}},
		{"EMFILE", func(int) error { return &net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.EMFILE)} }},
		{"EADDRNOTAVAIL", func(int) error {
			return &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, names := ringMesh(t, 8)
			liar, about := names[0], names[1]
			var checker string
			for _, nm := range names[2:] {
				if !ring(nm, names, 4, 2)[about] {
					checker = nm
					break
				}
			}
			d := m.dets[checker]
			var mu sync.Mutex
			n := 0
			d.mu.Lock()
			d.dialFn = func(ctx context.Context, addr string) (net.Conn, error) {
				mu.Lock()
				i := n
				n++
				mu.Unlock()
				if err := tc.fail(i); err != nil {
					if errors.Is(err, context.DeadlineExceeded) {
						<-ctx.Done() // the SYN unanswered until the dial's deadline
					}
					return nil, err
				}
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}
			d.mu.Unlock()
			d.Deliver(context.Background(), m.dets[liar].seal(msgDead, about))
			stillAlive(t, d, about, 2*DefaultTimeout)
		})
	}
}

// Connections from an address no peer listens on, held open without a word (no key
// needed), take at most a quarter of the handshakes: a peer still gets in, however many
// such connections keep coming.
func TestStrangersCannotTakeThePeersHandshakes(t *testing.T) {
	m := newMesh(t)
	b := m.start("b", key)
	addr := m.addrs["b"]
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	stranger := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: time.Second}
	// 256 at once, each opened again as soon as b closes it, for the test's length.
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := stranger.DialContext(ctx, "tcp", addr)
				if err != nil {
					select {
					case <-ctx.Done():
					case <-time.After(time.Millisecond):
					}
					continue
				}
				stop := context.AfterFunc(ctx, func() { c.Close() })
				_, _ = c.Read(make([]byte, 1)) // until b closes it
				stop()
				c.Close()
			}
		}()
	}
	waitFor(t, 5*time.Second, "strangers refused", func() bool { return dropped(b, DropLimit) > 0 })
	m.start("a", key) // a dials b (the lower name dials)
	waitFor(t, 5*time.Second, "a connected to b despite the strangers", func() bool { return len(b.Peers()) == 1 })
}

// A connection that ends while the peer lives is replaced by the dialler's next one on
// the same goroutine, without nesting: a peer that reconnects again and again (or a
// path that keeps cutting the connection) does not grow that goroutine's stack.
func TestReconnectsDoNotNest(t *testing.T) {
	m := newMesh(t)
	m.start("a", key)
	b := m.start("b", key)
	m.connected("a", "b")
	for i := range 8 {
		b.mu.Lock()
		c := b.peers["a"].conn
		b.mu.Unlock()
		if c != nil {
			_ = c.Close() // b cuts it; a dials again (the lower name)
		}
		waitFor(t, 5*time.Second, fmt.Sprintf("reconnection %d", i), func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.peers["a"].conn != nil && b.peers["a"].conn != c
		})
		m.connected("a", "b")
	}
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if n := strings.Count(g, "liveness.(*Detector).adoptOne("); n > 1 {
			t.Fatalf("a goroutine holds %d connections' reads nested:\n%s", n, g)
		}
		if n := strings.Count(g, "liveness.(*Detector).adopt("); n > 1 {
			t.Fatalf("a goroutine holds %d connections' reads nested:\n%s", n, g)
		}
	}
}
