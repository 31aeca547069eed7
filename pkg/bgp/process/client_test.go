package process

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/leaktest"
)

// The test binary is also the BGP process of these tests (argument fake-child: a
// bgp.Speaker that counts what it is given in its metrics) and a speaker that starts one
// and is then killed (argument parent).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "fake-child":
			fakeChild()
			os.Exit(0)
		case "parent":
			parent()
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

type fake struct {
	end           *Server
	peers, routes prometheus.Gauge
	routeSets     prometheus.Counter
}

func (f *fake) SetPeers(_ context.Context, ps []bgp.Peer) error {
	for _, p := range ps {
		if p.Port == 666 {
			return fmt.Errorf("peer %s: port 666 refused", p.Address)
		}
	}
	f.peers.Set(float64(len(ps)))
	for _, p := range ps {
		f.end.Session(bgp.SessionEvent{Peer: p.Address, State: bgp.Established})
	}
	return nil
}

func (f *fake) SetRoutes(_ context.Context, rs []bgp.Route) error {
	f.routes.Set(float64(len(rs)))
	f.routeSets.Inc()
	return nil
}

func fakeChild() {
	reg := prometheus.NewRegistry()
	f := &fake{end: NewServer(os.Stdout),
		peers:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "fake_peers"}),
		routes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "fake_routes"}),
		routeSets: prometheus.NewCounter(prometheus.CounterOpts{Name: "fake_route_sets_total"}),
	}
	reg.MustRegister(f.peers, f.routes, f.routeSets)
	if err := f.end.Serve(os.Stdin, f, reg); err != nil {
		fmt.Fprintln(os.Stderr, "fake child:", err)
		os.Exit(1)
	}
}

// parent starts a BGP process, prints its pid and waits to be killed.
func parent() {
	c, _ := New(Options{Path: os.Args[0], Args: []string{"fake-child"}})
	if err := c.SetPeers(context.Background(), peers(1)); err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println(c.pid())
	time.Sleep(time.Minute)
}

func peers(n int) []bgp.Peer {
	var out []bgp.Peer
	for i := range n {
		out = append(out, bgp.Peer{Address: netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + i)}), ASN: 64500, MyASN: 64501})
	}
	return out
}

func routes(n int) []bgp.Route {
	var out []bgp.Route
	for i := range n {
		out = append(out, bgp.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, 0, byte(i)}), 32), Communities: []uint32{65000<<16 | 1}})
	}
	return out
}

// pid is the running BGP process's, 0 when none runs.
func (c *Client) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reapLocked()
	if c.child == nil {
		return 0
	}
	return c.child.cmd.Process.Pid
}

// metric returns the BGP process's value of an unlabelled metric, -1 without it.
func metric(t *testing.T, c *Client, name string) float64 {
	t.Helper()
	mfs, err := c.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			m := mf.Metric[0]
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	return -1
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
	}
}

// The BGP process runs only while there are peers, holds what it is handed (each set
// once), reports sessions and metrics, comes back with the whole state after a crash,
// and ends with Run, as does every goroutine of the Client.
func TestClientRunsTheProcessWhilePeersExist(t *testing.T) {
	var mu sync.Mutex
	var sessions []bgp.SessionEvent
	c, err := New(Options{Path: os.Args[0], Args: []string{"fake-child"}, Backoff: 50 * time.Millisecond,
		OnSession: func(e bgp.SessionEvent) { mu.Lock(); sessions = append(sessions, e); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	ran := false
	defer func() {
		if cancel(); !ran {
			<-done
		}
	}()

	if err := c.SetRoutes(ctx, routes(3)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPeers(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if pid := c.pid(); pid != 0 {
		t.Fatalf("a BGP process (pid %d) runs without peers", pid)
	}
	if mfs, err := c.Gather(); err != nil || len(mfs) != 0 {
		t.Fatalf("metrics without a BGP process: %v, %v", mfs, err)
	}

	if err := c.SetPeers(ctx, peers(2)); err != nil {
		t.Fatal(err)
	}
	first := c.pid()
	if first == 0 {
		t.Fatal("no BGP process with two peers")
	}
	if got := metric(t, c, "fake_peers"); got != 2 {
		t.Errorf("fake_peers = %v, want 2", got)
	}
	if got := metric(t, c, "fake_routes"); got != 3 {
		t.Errorf("fake_routes = %v, want 3 (the routes set before the process ran)", got)
	}
	for range 3 {
		if err := c.SetRoutes(ctx, routes(3)); err != nil {
			t.Fatal(err)
		}
	}
	if got := metric(t, c, "fake_route_sets_total"); got != 1 {
		t.Errorf("the same routes were sent %v times, want once", got)
	}
	waitFor(t, "two sessions reported", func() bool { mu.Lock(); defer mu.Unlock(); return len(sessions) == 2 })
	if sessions[0].Peer != peers(1)[0].Address || sessions[0].State != bgp.Established {
		t.Errorf("session events %v", sessions)
	}

	bad := append(peers(1), bgp.Peer{Address: netip.MustParseAddr("10.0.0.9"), Port: 666})
	if err := c.SetPeers(ctx, bad); err == nil || !strings.Contains(err.Error(), "port 666 refused") {
		t.Errorf("SetPeers of a refused peer: %v, want the BGP process's error", err)
	}
	if err := c.SetPeers(ctx, peers(2)); err != nil {
		t.Fatal(err)
	}

	// A crash: the process is started again and given the whole state.
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "another BGP process after the first was killed", func() bool { p := c.pid(); return p != 0 && p != first })
	if got := metric(t, c, "fake_routes"); got != 3 {
		t.Errorf("after the restart fake_routes = %v, want 3", got)
	}
	if got := metric(t, c, "fake_peers"); got != 2 {
		t.Errorf("after the restart fake_peers = %v, want 2", got)
	}

	second := c.pid()
	if err := c.SetPeers(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if c.pid() != 0 || alive(second) {
		t.Errorf("the BGP process (pid %d) runs on without peers", second)
	}
	if err := c.SetPeers(ctx, peers(1)); err != nil {
		t.Fatal(err)
	}
	third := c.pid()
	cancel()
	ran = true
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if alive(third) {
		t.Errorf("the BGP process (pid %d) outlived Run", third)
	}
	leaktest.Check(t, "github.com/heraldlb/herald/pkg/bgp/process.")
}

// A BGP process exits with the speaker, even one killed at once: its sessions must not
// outlive the node's announcements.
func TestProcessDiesWithTheSpeaker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "parent")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var line string
	if _, err := fmt.Fscanln(out, &line); err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("the parent said %q", line)
	}
	defer func() { _ = syscall.Kill(pid, syscall.SIGKILL) }()
	if !alive(pid) {
		t.Fatalf("BGP process %d not running", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, fmt.Sprintf("BGP process %d gone with its speaker", pid), func() bool {
		// Reaped by init, or a zombie until then: either way it does not run.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return errors.Is(err, os.ErrNotExist) || (err == nil && strings.Contains(string(b), ") Z "))
	})
}

// A BGP process that cannot start fails SetPeers with the path in the error.
func TestMissingProcess(t *testing.T) {
	c, err := New(Options{Path: "/nonexistent/speaker-bgp"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.SetPeers(context.Background(), peers(1))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/speaker-bgp") {
		t.Errorf("SetPeers: %v, want an error naming the BGP process", err)
	}
}
