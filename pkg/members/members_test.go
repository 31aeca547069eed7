package members

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

type cluster struct {
	t       *testing.T
	key     []byte
	mu      sync.Mutex
	addrs   []string
	members map[string]*Members
	cancel  map[string]context.CancelFunc
	done    map[string]chan error
	inbox   map[string]chan []byte // what each member received (OnMessage)
}

func newCluster(t *testing.T, key []byte) *cluster {
	return &cluster{t: t, key: key, members: map[string]*Members{}, cancel: map[string]context.CancelFunc{}, done: map[string]chan error{},
		inbox: map[string]chan []byte{}}
}

func (c *cluster) start(name string, key []byte) *Members {
	c.t.Helper()
	inbox := make(chan []byte, 16)
	m, err := New(Config{
		Name: name, BindAddr: "127.0.0.1", BindPort: 0, Key: key, Meta: []byte("meta of " + name),
		OnMessage: func(msg []byte) {
			select {
			case inbox <- msg:
			default:
			}
		},
		Peers: func() []string {
			c.mu.Lock()
			defer c.mu.Unlock()
			return slices.Clone(c.addrs)
		},
	})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	c.t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if host, port := m.Addr(); port != 0 {
			c.mu.Lock()
			c.addrs = append(c.addrs, host+":"+strconv.Itoa(port))
			c.mu.Unlock()
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatal("memberlist did not start")
		}
	}
	c.members[name], c.cancel[name], c.done[name], c.inbox[name] = m, cancel, done, inbox
	return m
}

func (c *cluster) waitAlive(m *Members, want []string, limit time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if got := m.Alive(); slices.Equal(got, want) {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("after %s %s sees %v, want %v", limit, m.cfg.Name, m.Alive(), want)
	return 0
}

var key = []byte("0123456789abcdef")

func TestJoinAndGracefulLeave(t *testing.T) {
	c := newCluster(t, key)
	a := c.start("a", key)
	c.start("b", key)
	c.start("c", key)
	c.waitAlive(a, []string{"a", "b", "c"}, 10*time.Second)
	select {
	case <-a.Changed():
	default:
		t.Error("joins were not signalled")
	}
	for name, meta := range a.AliveMeta() {
		if string(meta) != "meta of "+name {
			t.Errorf("a sees %s's metadata as %q", name, meta)
		}
	}
	c.cancel["c"]() // graceful: Leave is broadcast
	if err := <-c.done["c"]; err != nil {
		t.Fatal(err)
	}
	c.done["c"] <- nil
	took := c.waitAlive(a, []string{"a", "b"}, 2*time.Second)
	t.Logf("graceful leave seen after %s", took)
}

// Messages reach the member they are sent to, or every other one, through memberlist's
// encrypted packets.
func TestSendAndBroadcast(t *testing.T) {
	c := newCluster(t, key)
	a := c.start("a", key)
	c.start("b", key)
	c.start("c", key)
	c.waitAlive(a, []string{"a", "b", "c"}, 10*time.Second)
	receive := func(name, want string) {
		t.Helper()
		select {
		case got := <-c.inbox[name]:
			if string(got) != want {
				t.Errorf("%s received %q, want %q", name, got, want)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s received nothing, want %q", name, want)
		}
	}
	if err := a.Send("b", []byte("to b")); err != nil {
		t.Fatal(err)
	}
	receive("b", "to b")
	a.Broadcast([]byte("to all"))
	receive("b", "to all")
	receive("c", "to all")
	select {
	case got := <-c.inbox["a"]:
		t.Errorf("a received its own broadcast %q", got)
	case <-time.After(100 * time.Millisecond):
	}
	if err := a.Send("nobody", []byte("x")); err == nil {
		t.Error("a message to no member was sent")
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	c := newCluster(t, key)
	a := c.start("a", key)
	c.start("intruder", []byte("fedcba9876543210"))
	time.Sleep(1500 * time.Millisecond)
	if got := a.Alive(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("a member with another key joined: %v", got)
	}
}

func TestBadKey(t *testing.T) {
	if _, err := New(Config{Name: "a", Key: []byte("short")}); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}

// BenchmarkDetectHardFailure measures how long two members take to see a third one that
// stops answering without leaving (its memberlist shut down, as when a node dies), with
// the default probe settings. It reports the median over b.N failures in ms.
func BenchmarkDetectHardFailure(b *testing.B) {
	var took []time.Duration
	for i := range b.N {
		m := map[string]*Members{}
		var addrs []string
		var mu sync.Mutex
		var stops []func()
		for _, name := range []string{"a", "b", "c"} {
			mm, _ := New(Config{Name: fmt.Sprint(name, i), BindAddr: "127.0.0.1", Key: key, Peers: func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(addrs) }})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- mm.Run(ctx) }()
			stops = append(stops, func() { cancel(); <-done })
			for _, p := mm.Addr(); p == 0; _, p = mm.Addr() {
				time.Sleep(5 * time.Millisecond)
			}
			h, p := mm.Addr()
			mu.Lock()
			addrs = append(addrs, h+":"+strconv.Itoa(p))
			mu.Unlock()
			m[name] = mm
		}
		for len(m["a"].Alive()) != 3 {
			time.Sleep(10 * time.Millisecond)
		}
		start := time.Now()
		m["c"].crash()
		for len(m["a"].Alive()) != 2 || len(m["b"].Alive()) != 2 {
			if time.Since(start) > 30*time.Second {
				b.Fatal("failure never detected")
			}
			time.Sleep(5 * time.Millisecond)
		}
		took = append(took, time.Since(start))
		for _, s := range stops {
			s()
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-median")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-max")
}

// The defaults must never declare a live speaker dead because its node is busy: with
// four processes spinning on the two cores for ten seconds, no member may drop out of
// anyone's view.
func TestNoFalseAlarmUnderCPULoad(t *testing.T) {
	if testing.Short() {
		t.Skip("ten seconds of CPU load")
	}
	c := newCluster(t, key)
	ms := []*Members{c.start("a", key), c.start("b", key), c.start("c", key)}
	for _, m := range ms {
		c.waitAlive(m, []string{"a", "b", "c"}, 10*time.Second)
	}
	for range 4 {
		hog := exec.Command("sh", "-c", "while :; do :; done")
		if err := hog.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hog.Process.Kill(); _ = hog.Wait() })
	}
	end := time.Now().Add(10 * time.Second)
	for time.Now().Before(end) {
		for _, m := range ms {
			if got := m.Alive(); len(got) != 3 {
				t.Fatalf("under CPU load %s sees only %v", m.cfg.Name, got)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}
