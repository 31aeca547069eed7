package liveness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

var key = []byte("0123456789abcdef")

// mesh runs detectors on loopback that watch each other.
type mesh struct {
	t      testing.TB
	mu     sync.Mutex
	addrs  map[string]string
	dets   map[string]*Detector
	cancel map[string]context.CancelFunc
	done   map[string]chan struct{}
}

func newMesh(t testing.TB) *mesh {
	return &mesh{t: t, addrs: map[string]string{}, dets: map[string]*Detector{}, cancel: map[string]context.CancelFunc{}, done: map[string]chan struct{}{}}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (m *mesh) peers(self string) func() map[string]string {
	return func() map[string]string {
		m.mu.Lock()
		defer m.mu.Unlock()
		out := map[string]string{}
		for n, a := range m.addrs {
			if n != self {
				out[n] = a
			}
		}
		return out
	}
}

func (m *mesh) start(name string, k []byte) *Detector {
	m.t.Helper()
	addr := freeAddr(m.t)
	m.mu.Lock()
	m.addrs[name] = addr
	m.mu.Unlock()
	d, err := New(Config{Name: name, Listen: addr, Key: k, Peers: m.peers(name)})
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	m.dets[name], m.cancel[name], m.done[name] = d, cancel, done
	m.t.Cleanup(func() { cancel(); <-done })
	return d
}

// crash ends a detector as a process exit would: its kernel closes every socket.
func (m *mesh) crash(name string) {
	m.cancel[name]()
	<-m.done[name]
}

func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("not within %s: %s", limit, what)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func (m *mesh) connected(names ...string) {
	m.t.Helper()
	for _, n := range names {
		want := slices.DeleteFunc(slices.Clone(names), func(o string) bool { return o == n })
		waitFor(m.t, 5*time.Second, n+" connected to "+fmt.Sprint(want), func() bool { return slices.Equal(m.dets[n].Peers(), want) })
	}
}

func deadAs(d *Detector, name string) Reason {
	dead, _ := d.Dead()
	return dead[name]
}

// A process that dies is known dead by its peers within a round trip: its kernel closes
// the connection and refuses a new one.
func TestCrashIsKnownAtOnce(t *testing.T) {
	m := newMesh(t)
	a, b := m.start("a", key), m.start("b", key)
	m.start("c", key)
	m.connected("a", "b", "c")
	start := time.Now()
	m.crash("c")
	for _, d := range []*Detector{a, b} {
		waitFor(t, time.Second, "c dead", func() bool { return deadAs(d, "c") == Closed })
	}
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Logf("crash known after %s (the bound of this design is a round trip; this machine is loaded?)", took)
	}
	// It comes back: alive again.
	m.start("c", key)
	waitFor(t, 5*time.Second, "c back", func() bool { return deadAs(a, "c") == 0 && deadAs(b, "c") == 0 })
}

// A speaker that leaves says so, and waits until the others acknowledge, which they do
// once they have acted on it.
func TestLeaveIsAcknowledgedAfterApplying(t *testing.T) {
	m := newMesh(t)
	a, b := m.start("a", key), m.start("b", key)
	m.connected("a", "b")
	left := make(chan struct{})
	go func() { a.Leave(context.Background()); close(left) }()
	waitFor(t, time.Second, "b sees a leave", func() bool { return deadAs(b, "a") == Left })
	select {
	case <-left:
		t.Fatal("Leave returned before b acted on it")
	case <-time.After(200 * time.Millisecond):
	}
	_, gen := b.Dead()
	b.Applied(gen)
	select {
	case <-left:
	case <-time.After(time.Second):
		t.Fatal("Leave did not return after b's acknowledgement")
	}
	// Bounded: with nobody acknowledging, Leave ends with its context.
	m2 := newMesh(t)
	c := m2.start("c", key)
	m2.start("d", key)
	m2.connected("c", "d")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	c.Leave(ctx)
	if took := time.Since(start); took < 250*time.Millisecond || took > time.Second {
		t.Errorf("an unacknowledged Leave took %s, want its context's 300ms", took)
	}
}

// A peer without the gossip key is not let in, and does not let us in.
func TestWrongKeyIsRefused(t *testing.T) {
	m := newMesh(t)
	a := m.start("a", key)
	m.start("b", []byte("another key 1234"))
	time.Sleep(500 * time.Millisecond)
	if p := a.Peers(); len(p) != 0 {
		t.Errorf("a accepted %v without the key", p)
	}
}

// meshWithProcess starts detectors a and b in this process and z in another (the test
// binary's TestHelper), so that z can be stopped or killed with its sockets open; it
// returns once a is connected to z.
func meshWithProcess(t *testing.T) (*Detector, *exec.Cmd) {
	t.Helper()
	m := newMesh(t)
	a := m.start("a", key)
	m.start("b", key)
	addr := freeAddr(t)
	m.mu.Lock()
	m.addrs["z"] = addr
	m.mu.Unlock()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelper$")
	cmd.Env = append(os.Environ(), "HERALD_LIVENESS_HELPER="+addr, "HERALD_LIVENESS_PEERS="+m.addrs["a"]+","+m.addrs["b"])
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, 5*time.Second, "a connected to z", func() bool { return slices.Contains(a.Peers(), "z") })
	return a, cmd
}

// A silent peer (its process stopped, its node gone) is dead after the timeout.
func TestSilenceIsDeath(t *testing.T) {
	if os.Getenv("HERALD_LIVENESS_HELPER") != "" {
		t.Skip("helper")
	}
	a, cmd := meshWithProcess(t)
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGCONT) }()
	waitFor(t, 3*time.Second, "z dead", func() bool { return deadAs(a, "z") == Silent })
	took := time.Since(start)
	if took < DefaultTimeout {
		t.Errorf("z declared dead after %s, before the %s timeout", took, DefaultTimeout)
	}
	t.Logf("silent peer declared dead after %s", took.Round(time.Millisecond))
}

// A real process killed with SIGKILL: its kernel closes the connections.
func TestKilledProcessIsKnownAtOnce(t *testing.T) {
	if os.Getenv("HERALD_LIVENESS_HELPER") != "" {
		t.Skip("helper")
	}
	a, cmd := meshWithProcess(t)
	start := time.Now()
	_ = cmd.Process.Kill()
	waitFor(t, 3*time.Second, "z dead", func() bool { return deadAs(a, "z") != 0 })
	if why := deadAs(a, "z"); why != Closed {
		t.Errorf("a killed process found dead by %s, want %s", why, Closed)
	}
	t.Logf("killed process known dead after %s", time.Since(start).Round(time.Millisecond))
}

// TestHelper is the stopped process of TestSilenceIsDeath.
func TestHelper(t *testing.T) {
	addr := os.Getenv("HERALD_LIVENESS_HELPER")
	if addr == "" {
		t.Skip("run by TestSilenceIsDeath")
	}
	var peers []string
	for _, p := range splitComma(os.Getenv("HERALD_LIVENESS_PEERS")) {
		peers = append(peers, p)
	}
	d, err := New(Config{Name: "z", Listen: addr, Key: key, Peers: func() map[string]string {
		return map[string]string{"a": peers[0], "b": peers[1]}
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = d.Run(ctx)
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// BenchmarkCrashDetection measures, on loopback, how long after one of N speakers stops
// (its sockets closed, as when its process dies) every other knows it dead; N is
// HERALD_LIVENESS_N (default 50). Reports min, median and max over the rounds. Run:
// go test ./pkg/liveness -run '^$' -bench CrashDetection -benchtime 20x
func BenchmarkCrashDetection(b *testing.B) {
	n := 50
	if v, err := strconv.Atoi(os.Getenv("HERALD_LIVENESS_N")); err == nil && v > 1 {
		n = v
	}
	m := newMesh(b)
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("s%02d", i))
		m.start(names[i], key)
	}
	for _, nm := range names {
		waitFor(b, 30*time.Second, nm+" connected to all", func() bool { return len(m.dets[nm].Peers()) == n-1 })
	}
	var took []time.Duration
	round := 0
	for b.Loop() {
		victim := names[round%n]
		round++
		start := time.Now()
		m.crash(victim)
		for _, nm := range names {
			if nm == victim {
				continue
			}
			waitFor(b, 10*time.Second, victim+" dead at "+nm, func() bool { return deadAs(m.dets[nm], victim) != 0 })
		}
		took = append(took, time.Since(start))
		m.start(victim, key)
		for _, nm := range names {
			waitFor(b, 30*time.Second, victim+" back at "+nm, func() bool { return deadAs(m.dets[nm], victim) == 0 })
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[0].Microseconds())/1000, "ms-min")
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "ms-max")
}
