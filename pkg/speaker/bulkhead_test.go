package speaker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/plan"
)

// stuckBGP is a BGP speaker whose every call blocks until its context ends: a BGP
// process that never answers.
type stuckBGP struct{ calls atomic.Int32 }

func (b *stuckBGP) SetPeers(ctx context.Context, _ []bgp.Peer) error {
	b.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

func (b *stuckBGP) SetRoutes(ctx context.Context, _ []bgp.Route) error {
	b.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

// failingBGP is a BGP speaker whose every call fails at once: a BGP process that exits.
type failingBGP struct{ calls atomic.Int32 }

func (b *failingBGP) SetPeers(context.Context, []bgp.Peer) error {
	b.calls.Add(1)
	return errors.New("the BGP process exited (exit status 1)")
}

func (b *failingBGP) SetRoutes(context.Context, []bgp.Route) error {
	b.calls.Add(1)
	return errors.New("the BGP process exited (exit status 1)")
}

// stuckForwarder is a forwarder whose Set blocks until released.
type stuckForwarder struct {
	calls   atomic.Int32
	release chan struct{}
}

func (f *stuckForwarder) Set([]forward.Service) error {
	f.calls.Add(1)
	<-f.release
	return nil
}

func (f *stuckForwarder) Resync() {}

// fakeLiveness is a failure detector whose deaths the test declares.
type fakeLiveness struct {
	mu      sync.Mutex
	dead    map[string]liveness.Reason
	gen     uint64
	applied uint64
	changed chan struct{}
}

func newFakeLiveness() *fakeLiveness {
	return &fakeLiveness{dead: map[string]liveness.Reason{}, changed: make(chan struct{}, 1)}
}

func (l *fakeLiveness) Dead() (map[string]liveness.Reason, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.dead), l.gen
}

func (l *fakeLiveness) Changed() <-chan struct{} { return l.changed }

func (l *fakeLiveness) Applied(gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.applied = max(l.applied, gen)
}

func (l *fakeLiveness) Observe([]string)      {}
func (l *fakeLiveness) Alive() []string       { return nil }
func (l *fakeLiveness) Leave(context.Context) {}

func (l *fakeLiveness) kill(name string, why liveness.Reason) {
	l.mu.Lock()
	l.dead[name] = why
	l.gen++
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// set replaces every finding at once: the members found dead, and how.
func (l *fakeLiveness) set(dead map[string]liveness.Reason) {
	l.mu.Lock()
	l.dead, l.gen = maps.Clone(dead), l.gen+1
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

func (l *fakeLiveness) appliedGen() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applied
}

func (l *layer2Rec) addrs() []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []netip.Addr
	for _, o := range l.owned {
		out = append(out, o.IP)
	}
	return out
}

// A BGP process that hangs or fails, and a forwarder and a relay that hang, delay nothing of layer
// 2: a liveness death reaches Layer2.Set with the runners' clock standing still — no
// backoff, no retry period, no timeout of another part is waited out.
func TestDeathReachesLayer2WhateverBGPDoes(t *testing.T) {
	for _, tc := range []struct {
		name string
		bgp  interface {
			bgp.Speaker
			n() int32
		}
	}{
		{"BGP hung", &stuckBGPn{}},
		{"BGP failing", &failingBGPn{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := k8stest.Shared(t)
			c := kubernetes.NewForConfigOrDie(cp.Config)
			ns := inForce(t, c, `
peers:
- {peer-address: 10.0.0.254, peer-asn: 64500, my-asn: 64501}
address-pools:
- {name: l2, protocol: layer2, forwarding: none, relay-local: true, addresses: [192.168.30.90-192.168.30.99]}
`)
			suffix := map[string]string{"BGP hung": "h", "BGP failing": "f"}[tc.name]
			n1, n2, n3, n4 := "bh1"+suffix, "bh2"+suffix, "bh3"+suffix, "bh4"+suffix
			members := &fakeMembers{meta: map[string][]byte{}, changed: make(chan struct{}, 1)}
			for i, n := range []string{n1, n2, n3, n4} {
				createNode(t, c, n, fmt.Sprintf("10.0.1.%d", i+1), true)
				members.set(n, false)
			}
			live := newFakeLiveness()
			clk := clocktesting.NewFakeClock(time.Now())
			l2 := &layer2Rec{}
			fwd := &stuckForwarder{release: make(chan struct{})}
			rel := &stuckRelay{release: make(chan struct{})}
			s, err := New(Options{Client: coreClient(t), NodeName: n1, Config: k8s.ConfigRef{Namespace: ns}, Layer2: l2,
				BGP: tc.bgp, Members: members, Liveness: live, Forward: fwd, Relay: rel, Clock: clk,
				Backoff: time.Second, MaxBackoff: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			run(t, s)
			t.Cleanup(func() { close(fwd.release); close(rel.release) }) // runs before the speaker stops
			const n = 10
			for i := range n {
				createService(t, c, ns, fmt.Sprintf("web%d", i), fmt.Sprintf("192.168.30.%d", 90+i), nil)
			}
			owned := func(st *snapshot, node string) []netip.Addr {
				var out []netip.Addr
				for _, d := range st.d.Decisions {
					if d.Owner == node {
						out = append(out, d.IP)
					}
				}
				slices.SortFunc(out, netip.Addr.Compare)
				return out
			}
			// n1 answers for its share, while the BGP part is stuck or failing and the
			// forwarder hangs.
			var before *snapshot
			eventually(t, func() (bool, string) {
				before = s.latest.Load()
				if before == nil || len(before.d.Decisions) < n {
					s.planner.Poke()
					return false, "not every Service planned yet"
				}
				got := l2.addrs()
				return slices.Equal(got, owned(before, n1)) && tc.bgp.n() > 0 && fwd.calls.Load() > 0 && rel.calls.Load() > 0,
					fmt.Sprintf("%s answers %v, want %v; BGP called %d times, the forwarder %d, the relay %d", n1, got, owned(before, n1), tc.bgp.n(), fwd.calls.Load(), rel.calls.Load())
			})
			gains := len(owned(before, n2)) + len(owned(before, n4))
			if gains == 0 {
				t.Fatalf("%s and %s own nothing before they die: the test needs other node names", n2, n4)
			}
			// n2's port refuses, n4 goes silent (liveness knows, memberlist does not yet):
			// the survivors take their addresses, and n1's reach Layer2.Set though no clock
			// has moved since the BGP part began to fail.
			live.kill(n2, liveness.Closed)
			live.kill(n4, liveness.Silent)
			eventually(t, func() (bool, string) {
				st := s.latest.Load()
				if len(owned(st, n2))+len(owned(st, n4)) > 0 {
					return false, "the newest plan still has the dead owning addresses"
				}
				got, want := l2.addrs(), owned(st, n1)
				return slices.Equal(got, want) && live.appliedGen() == 2,
					fmt.Sprintf("%s answers %v, want %v (liveness view applied: gen %d, want 2)", n1, got, want, live.appliedGen())
			})
			st := s.latest.Load()
			if diff := cmp.Diff(map[string]liveness.Reason{n2: liveness.Closed, n4: liveness.Silent}, st.view.Dead()); diff != "" {
				t.Errorf("the view's deaths (-want +got):\n%s", diff)
			}
			if len(owned(st, n1)) <= len(owned(before, n1)) {
				t.Logf("%s gained nothing (%d addresses from the dead went to %s)", n1, gains, n3)
			}
		})
	}
}

type stuckBGPn struct{ stuckBGP }

func (b *stuckBGPn) n() int32 { return b.calls.Load() }

type failingBGPn struct{ failingBGP }

func (b *failingBGPn) n() int32 { return b.calls.Load() }

// Layer 2 waits for the forwarder to try a plan that gains a virtual service, but at
// most ForwardWait, and not at all once the forwarder's last try failed.
func TestForwardWaitIsBounded(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	var p progress
	p.changed = make(chan struct{})
	waited := func(seq uint64) chan struct{} {
		done := make(chan struct{})
		go func() { p.wait(context.Background(), seq, clk, DefaultForwardWait); close(done) }()
		return done
	}
	returned := func(done chan struct{}) bool {
		select {
		case <-done:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}
	// The forwarder hangs on plan 1: layer 2 goes on after ForwardWait, not before.
	done := waited(1)
	if returned(done) {
		t.Fatal("layer 2 did not wait for the forwarder")
	}
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(DefaultForwardWait)
	if !returned(done) {
		t.Fatal("layer 2 still waits for a hung forwarder after ForwardWait")
	}
	// Still hung: the next plan (a death, say) does not wait again.
	if !returned(waited(2)) {
		t.Fatal("layer 2 waits again for a forwarder that has hung since the last wait ran out")
	}
	// The forwarder tries plan 2: layer 2 goes on at once.
	done = waited(2)
	p.set(2, false)
	if !returned(done) {
		t.Fatal("layer 2 still waits after the forwarder tried its plan")
	}
	// The forwarder's last try failed: layer 2 does not wait for its retry.
	p.set(2, true)
	if !returned(waited(3)) {
		t.Fatal("layer 2 waits for a failing forwarder")
	}
}

func TestForwardGained(t *testing.T) {
	a := forward.Service{VIP: netip.MustParseAddr("192.168.10.90"), Port: 80, RealServers: rs("10.0.0.1:30080")}
	b := forward.Service{VIP: netip.MustParseAddr("192.168.10.91"), Port: 80, RealServers: rs("10.0.0.1:30081")}
	a2 := a
	a2.RealServers = rs("10.0.0.2:30080")
	snap := func(fs ...forward.Service) *snapshot { return &snapshot{d: plan.Desired{Forward: fs}} }
	for _, tc := range []struct {
		name string
		prev *snapshot
		now  []forward.Service
		want bool
	}{
		{"nothing to forward", nil, nil, false},
		{"first plan", nil, []forward.Service{a}, true},
		{"same", snap(a, b), []forward.Service{a, b}, false},
		{"one removed", snap(a, b), []forward.Service{a}, false},
		{"one added", snap(a), []forward.Service{a, b}, true},
		{"one changed", snap(a, b), []forward.Service{a2, b}, true},
	} {
		if got := forwardGained(tc.prev, tc.now); got != tc.want {
			t.Errorf("%s: forwardGained = %v, want %v", tc.name, got, tc.want)
		}
	}
}
