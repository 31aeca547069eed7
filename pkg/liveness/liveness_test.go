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

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var key = []byte("0123456789abcdef")

// mesh runs detectors on loopback that watch each other.
type mesh struct {
	t       testing.TB
	mu      sync.Mutex
	addrs   map[string]string
	version int // incremented with every change of addrs
	dets    map[string]*Detector
	cancel  map[string]context.CancelFunc
	done    map[string]chan struct{}
	// tweak, when set, changes each detector's Config (a ring: Mesh, Monitors).
	tweak func(*Config)
	// prepare, when set, changes each detector before it runs.
	prepare func(name string, d *Detector)
	// running are the detectors that receive what others broadcast or send (memberlist's
	// part, in this process).
	running map[string]*Detector
	ctx     map[string]context.Context
	// cancelAll ends every detector started, and all waits for each: at the end of the
	// test, all at once (hundreds, one by one, would each see the others die).
	cancelAll []context.CancelFunc
	all       []func()
}

func newMesh(t testing.TB) *mesh {
	m := newMeshOnly(t)
	t.Cleanup(func() {
		for _, c := range m.cancelAll {
			c()
		}
		for _, stop := range m.all {
			stop()
		}
	})
	return m
}

func newMeshOnly(t testing.TB) *mesh {
	return &mesh{t: t, addrs: map[string]string{}, dets: map[string]*Detector{}, cancel: map[string]context.CancelFunc{}, done: map[string]chan struct{}{},
		running: map[string]*Detector{}, ctx: map[string]context.Context{}}
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

// peers returns self's Config.Peers: every other detector's address. The map is made
// again only after an address changed (the detector does not modify it), so that
// hundreds of detectors in one process cost what one does on its node.
func (m *mesh) peers(self string) func() map[string]string {
	var out map[string]string
	var made int
	return func() map[string]string {
		m.mu.Lock()
		defer m.mu.Unlock()
		if out == nil || made != m.version {
			out, made = map[string]string{}, m.version
			for n, a := range m.addrs {
				if n != self {
					out[n] = a
				}
			}
		}
		return out
	}
}

// start runs a detector called name; it is in the others' Peers once it listens. A port
// found free may be taken (as a dial's source port) before the detector listens on it:
// then another.
func (m *mesh) start(name string, k []byte) *Detector {
	m.t.Helper()
	for try := 0; ; try++ {
		addr := freeAddr(m.t)
		cfg := Config{Name: name, Listen: addr, Key: k, Peers: m.peers(name)}
		if m.tweak != nil {
			cfg.Broadcast = func(msg []byte) { m.send("", name, msg) }
			cfg.Send = func(to string, msg []byte) { m.send(to, name, msg) }
			m.tweak(&cfg)
		}
		d, err := New(cfg)
		if err != nil {
			m.t.Fatal(err)
		}
		if m.prepare != nil {
			m.prepare(name, d)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		var runErr error
		go func() { defer close(done); runErr = d.Run(ctx) }()
		for listening := false; !listening; {
			select {
			case <-done:
				cancel()
				if try == 5 {
					m.t.Fatalf("%s: %v", name, runErr)
				}
			case <-time.After(time.Millisecond):
				d.mu.Lock()
				listening = d.ln != nil
				d.mu.Unlock()
				continue
			}
			break
		}
		select {
		case <-done:
			continue // the port was taken
		default:
		}
		m.mu.Lock()
		m.addrs[name] = addr
		m.version++
		m.running[name], m.ctx[name] = d, ctx
		m.mu.Unlock()
		m.dets[name], m.cancel[name], m.done[name] = d, cancel, done
		m.all = append(m.all, func() { m.stop(name, cancel, done) })
		m.cancelAll = append(m.cancelAll, cancel)
		return d
	}
}

// send delivers msg from one detector to another (to), or to every other ("").
func (m *mesh) send(to, from string, msg []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, d := range m.running {
		if name != from && (to == "" || to == name) {
			d.Deliver(m.ctx[name], msg)
		}
	}
}

func (m *mesh) stop(name string, cancel context.CancelFunc, done chan struct{}) {
	m.mu.Lock()
	if m.done[name] == done {
		delete(m.running, name)
	}
	m.mu.Unlock()
	cancel()
	<-done
}

// crash ends a detector as a process exit would: its kernel closes every socket.
func (m *mesh) crash(name string) {
	m.stop(name, m.cancel[name], m.done[name])
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
// HERALD_LIVENESS_N (default 50: a full mesh; beyond 51, each watches its ring
// neighbours and reports deaths to the others, as through memberlist). Reports min,
// median and max over the rounds, and the connections each speaker holds. Run:
// go test ./pkg/liveness -run '^$' -bench CrashDetection -benchtime 20x
func BenchmarkCrashDetection(b *testing.B) {
	n := 50
	if v, err := strconv.Atoi(os.Getenv("HERALD_LIVENESS_N")); err == nil && v > 1 {
		n = v
	}
	m := newMesh(b)
	m.tweak = func(*Config) {} // the defaults, with reports carried between detectors
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("s%03d", i))
		m.start(names[i], key)
	}
	watching := func(nm string) int {
		if w := ring(nm, names, DefaultMesh, DefaultMonitors); w != nil {
			return len(w)
		}
		return n - 1
	}
	for _, nm := range names {
		d := m.dets[nm]
		waitFor(b, 60*time.Second, nm+" connected to those it watches", func() bool {
			d.mu.Lock()
			ticked := d.ringLen == n-1
			d.mu.Unlock()
			return ticked && len(d.Peers()) == watching(nm)
		})
	}
	conns := 0
	for _, nm := range names {
		conns = max(conns, len(m.dets[nm].Peers()))
	}
	var took []time.Duration
	round := 0
	for b.Loop() {
		victim := names[(round*7)%n]
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
	b.ReportMetric(float64(conns), "conns/speaker")
}

// ringMesh starts n detectors that watch only their neighbours beyond a mesh of 4.
func ringMesh(t testing.TB, n int) (*mesh, []string) {
	m := newMesh(t)
	m.tweak = func(c *Config) { c.Mesh, c.Monitors = 4, 2 }
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("s%03d", i))
		m.start(names[i], key)
	}
	for _, nm := range names {
		want := ring(nm, names, 4, 2)
		d := m.dets[nm]
		waitFor(t, 10*time.Second, nm+" connected to its neighbours", func() bool {
			peers := d.Peers()
			d.mu.Lock()
			ticked := d.ringLen == n-1 // it knows every peer (not only those that dialled it)
			d.mu.Unlock()
			return ticked && len(peers) == len(want) && !slices.ContainsFunc(peers, func(p string) bool { return !want[p] })
		})
	}
	return m, names
}

// The ring: each speaker holds connections to its 2 × Monitors neighbours only, and
// a neighbour's report of a crash reaches every other, which checks it and agrees.
func TestRingWatchesNeighboursAndReportsDeaths(t *testing.T) {
	m, names := ringMesh(t, 12)
	for _, nm := range names {
		if got := len(m.dets[nm].Peers()); got != 4 {
			t.Errorf("%s holds %d connections, want 4 (two neighbours each side)", nm, got)
		}
	}
	victim := names[5]
	m.crash(victim)
	for _, nm := range names {
		if nm != victim {
			waitFor(t, 2*time.Second, victim+" dead at "+nm, func() bool { return deadAs(m.dets[nm], victim) == Closed })
		}
	}
	m.start(victim, key)
	for _, nm := range names {
		if nm != victim {
			waitFor(t, 5*time.Second, victim+" back at "+nm, func() bool { return deadAs(m.dets[nm], victim) == 0 })
		}
	}
	// Once back, speakers beyond its ring let go of the connections they made to learn so.
	for _, nm := range names {
		want := ring(nm, names, 4, 2)
		waitFor(t, 5*time.Second, nm+" back to its neighbours", func() bool { return len(m.dets[nm].Peers()) == len(want) })
	}
}

// A report is checked, not believed: a speaker told that a live one died keeps it alive.
func TestFalseReportIsNotBelieved(t *testing.T) {
	m, names := ringMesh(t, 8)
	liar, about := names[0], names[1]
	for _, nm := range names[2:] {
		m.dets[nm].Deliver(context.Background(), m.dets[liar].seal(msgDead, about))
	}
	time.Sleep(300 * time.Millisecond) // longer than a check takes
	for _, nm := range names[2:] {
		if r := deadAs(m.dets[nm], about); r != 0 {
			t.Errorf("%s believed %s dead (%s) on %s's word", nm, about, r, liar)
		}
	}
	// Nor is a leave taken from anyone but the leaver, and garbage is dropped.
	d := m.dets[names[3]]
	d.Deliver(context.Background(), m.dets[liar].seal(msgLeaving, about))
	d.Deliver(context.Background(), []byte{msgMagic, msgVersion, msgDead, 0, 200, 'x'})
	if r := deadAs(d, about); r != 0 {
		t.Errorf("%s took %s's leave from %s", names[3], about, liar)
	}
	for reason, want := range map[string]float64{"sender": 1, "truncated": 1} {
		if got := testutil.ToFloat64(d.metrics.Dropped.WithLabelValues(reason)); got != want {
			t.Errorf("dropped messages (%s): %v, want %v", reason, got, want)
		}
	}
}

// A speaker leaving a ring tells those beyond its neighbours through memberlist, and waits
// for their acknowledgements too.
func TestRingLeaveIsAcknowledgedByAll(t *testing.T) {
	m, names := ringMesh(t, 10)
	leaver := m.dets[names[0]]
	left := make(chan struct{})
	go func() { leaver.Leave(context.Background()); close(left) }()
	for _, nm := range names[1:] {
		waitFor(t, time.Second, nm+" sees the leave", func() bool { return deadAs(m.dets[nm], names[0]) == Left })
	}
	for _, nm := range names[1 : len(names)-1] {
		_, gen := m.dets[nm].Dead()
		m.dets[nm].Applied(gen)
	}
	select {
	case <-left:
		t.Fatal("Leave returned before the last speaker acknowledged")
	case <-time.After(200 * time.Millisecond):
	}
	last := m.dets[names[len(names)-1]]
	_, gen := last.Dead()
	last.Applied(gen)
	select {
	case <-left:
	case <-time.After(time.Second):
		t.Fatal("Leave did not return once every speaker acknowledged")
	}
}

// The ring is symmetric (a watches b exactly when b watches a) and each speaker watches
// 2 × monitors others, so a speaker's cost does not grow with the cluster.
func TestRingIsSymmetricAndBounded(t *testing.T) {
	var names []string
	for i := range 500 {
		names = append(names, fmt.Sprintf("node-%d", i))
	}
	if ring(names[0], names[:51], 50, 3) != nil {
		t.Error("51 speakers (50 peers) are not a full mesh")
	}
	w := map[string]map[string]bool{}
	for _, n := range names {
		w[n] = ring(n, names, 50, 3)
		if len(w[n]) != 6 {
			t.Fatalf("%s watches %d", n, len(w[n]))
		}
	}
	for a, ws := range w {
		for b := range ws {
			if !w[b][a] {
				t.Fatalf("%s watches %s, not the other way", a, b)
			}
		}
	}
}

// A peer found dead for its silence whose port then refuses (its node answers, its
// process is gone) is dead as Closed: its node is no longer taken to be dead or cut off.
func TestSilentPeerThatRefusesIsClosed(t *testing.T) {
	if os.Getenv("HERALD_LIVENESS_HELPER") != "" {
		t.Skip("helper")
	}
	a, cmd := meshWithProcess(t)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "z dead", func() bool { return deadAs(a, "z") == Silent })
	_, gen := a.Dead()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, 3*time.Second, "z dead as closed once its port refuses", func() bool { return deadAs(a, "z") == Closed })
	if _, now := a.Dead(); now <= gen {
		t.Errorf("generation %d after the change, %d before", now, gen)
	}
}
