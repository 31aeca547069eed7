package speaker

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/plan"
)

// snapshot is one computed plan, published whole and never changed after: every part
// reads the newest one it finds, and none waits for another to have read it.
type snapshot struct {
	seq  uint64 // increases with every plan
	in   plan.Input
	d    plan.Desired
	view View   // the membership the plan was computed from
	gen  uint64 // the generation of the liveness view it holds, for Liveness.Applied
	// forwardChanged says the forwarding state gained a virtual service the previous
	// plan did not hold: layer 2 then gives the forwarder a moment (ForwardWait) first.
	forwardChanged bool
	// relayChanged says the same of the flows relayed to other nodes.
	relayChanged bool
}

// planState is the planner's own: touched only on its runner's goroutine.
type planState struct {
	seq        uint64
	seenConfig string
	cfg        *config.Config
	silent     map[string]bool // nodes whose speaker went silent, until heard again
}

// syncPlan computes the desired state from the caches and the membership, publishes it,
// and pokes every part. It does no I/O, so it never fails and nothing waits for it but
// the parts that want its result.
func (s *Speaker) syncPlan(context.Context, bool) error {
	start := s.opts.Clock.Now()
	s.loadConfig()
	in, view, gen := s.input()
	d := s.compute(in)
	prev := s.latest.Load()
	s.plan.seq++
	snap := &snapshot{seq: s.plan.seq, in: in, d: d, view: view, gen: gen}
	snap.forwardChanged = s.forward.can.Load() && in.Config != nil && forwardGained(prev, d.Forward)
	snap.relayChanged = s.opts.Relay != nil && relayGained(prev, d.Relay)
	s.latest.Store(snap)
	s.metrics.Members.Set(float64(len(in.Members)))
	s.metrics.Addresses.Set(float64(len(d.Decisions)))
	s.metrics.SyncSeconds.Observe(s.opts.Clock.Since(start).Seconds())
	for _, r := range s.parts() {
		r.Poke()
	}
	return nil
}

// forwardGained reports whether now holds a virtual service that prev's plan did not
// hold as it is: one that layer 2 should not draw traffic to before the forwarder has
// tried it. Removals need no such care.
func forwardGained(prev *snapshot, now []forward.Service) bool {
	if prev == nil {
		return len(now) > 0
	}
	return gained(prev.d.Forward, now, forward.Service.Key, func(a, b forward.Service) bool { return reflect.DeepEqual(a, b) })
}

// gained reports whether now holds an item that had does not hold as it is: none with
// its key, or one that differs (same).
func gained[T any, K comparable](had, now []T, key func(T) K, same func(a, b T) bool) bool {
	old := make(map[K]T, len(had))
	for _, x := range had {
		old[key(x)] = x
	}
	for _, x := range now {
		if o, ok := old[key(x)]; !ok || !same(o, x) {
			return true
		}
	}
	return false
}

// compute is plan.Compute, except that a speaker that has not heard from any other yet
// (and has not waited JoinWait) announces nothing: alone, it would elect itself for every
// address and draw clients that the real owner then has to win back. A leaving speaker
// advertises no routes.
func (s *Speaker) compute(in plan.Input) plan.Desired {
	d := plan.Compute(in)
	if s.leaving.Load() {
		d.BGPRoutes = nil
	}
	if !in.UseMembers || len(in.Members) > 1 || s.opts.Clock.Since(s.started) >= s.opts.JoinWait || !s.othersExist(in.Nodes) {
		return d
	}
	return plan.Desired{BGPPeers: d.BGPPeers}
}

// othersExist reports whether another Ready node could run a speaker to join.
func (s *Speaker) othersExist(nodes []plan.Node) bool {
	return slices.ContainsFunc(nodes, func(n plan.Node) bool { return n.Name != s.opts.NodeName && n.Ready })
}

// input gathers the plan's input: the configuration in force, the caches, and the
// membership view (Merge) with the generation of the liveness view it holds.
func (s *Speaker) input() (plan.Input, View, uint64) {
	in := plan.Input{Config: s.plan.cfg, Self: s.opts.NodeName}
	var view View
	var gen uint64
	in.Nodes = s.nodes()
	if s.opts.Members != nil {
		sight := Sightings{Memberlist: s.opts.Members.Alive(), Self: s.opts.NodeName}
		if s.opts.Liveness != nil {
			s.opts.Liveness.Observe(sight.Memberlist)
			sight.Dead, gen = s.opts.Liveness.Dead()
			sight.Heard = s.opts.Liveness.Alive()
		}
		view = Merge(sight)
		in.UseMembers, in.Members = true, view.Alive()
		if s.opts.Liveness != nil {
			in.Silent = s.silentNodes(view.Dead(), in.Members, in.Nodes)
		}
	}
	in.Services = s.services()
	in.Forwarders = s.forwarders(in.Nodes)
	return in, view, gen
}

// silentNodes returns the nodes whose speaker went silent (plan.Input.Silent), from the
// failure detector's dead members and the live ones: a member found dead for its silence
// (a dead or cut-off node) counts, and stays counted after memberlist drops it (the
// detector then forgets it) until it is alive again. A speaker that crashed (its
// connection closed, its port refused) or left runs on a node that still forwards: it
// never counts. Without the detector there are none: memberlist alone cannot tell a
// crashed speaker from a dead node. A node deleted from the cluster is forgotten (node
// names come and go with autoscaling: the set would otherwise only grow).
func (s *Speaker) silentNodes(dead map[string]liveness.Reason, alive []string, nodes []plan.Node) map[string]bool {
	if s.plan.silent == nil {
		s.plan.silent = map[string]bool{}
	}
	for name, why := range dead {
		if why == liveness.Silent {
			s.plan.silent[name] = true
		} else {
			delete(s.plan.silent, name)
		}
	}
	for _, m := range alive {
		delete(s.plan.silent, m)
	}
	delete(s.plan.silent, s.opts.NodeName)
	maps.DeleteFunc(s.plan.silent, func(name string, _ bool) bool {
		return !slices.ContainsFunc(nodes, func(n plan.Node) bool { return n.Name == name })
	})
	return maps.Clone(s.plan.silent)
}

// loadConfig takes the configuration in force when it changed and parses; otherwise the
// last good one stays.
func (s *Speaker) loadConfig() {
	_, text, err := s.configs.Get()
	if err != nil || text == s.plan.seenConfig {
		return // missing: keep what is in force
	}
	s.plan.seenConfig = text
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		s.metrics.ConfigStale.Set(1)
		s.log.Error("the configuration in force does not parse; the last good one stays", "configMap", s.opts.Config.InForce().String(), "err", err)
		return
	}
	s.plan.cfg = cfg
	s.ownsMu.Lock()
	s.ownsCfg = cfg
	s.ownsMu.Unlock()
	s.metrics.ConfigStale.Set(0)
	hash := config.Hash([]byte(text))
	s.metrics.InForce.Set(hash)
	s.log.Info("configuration loaded", "pools", len(cfg.Pools), "hash", hash)
}

// forwarders are the nodes that can forward: from memberlist's metadata (this node's
// own included: it changes its metadata when it finds it cannot forward); without
// memberlist nothing tells what the other nodes' kernels can do, so they are taken to
// be able, and this node says for itself.
func (s *Speaker) forwarders(nodes []plan.Node) map[string]bool {
	out := map[string]bool{}
	if s.opts.Members != nil {
		for name, raw := range s.opts.Members.AliveMeta() {
			var m MemberMeta
			if json.Unmarshal(raw, &m) == nil && m.IPVS {
				out[name] = true
			}
		}
		// This node too, as the others see it, so that every speaker elects alike.
		return out
	}
	for _, n := range nodes {
		out[n.Name] = true
	}
	out[s.opts.NodeName] = s.forward.can.Load()
	return out
}

func (s *Speaker) nodes() []plan.Node {
	list, _ := s.nodeList.List(labels.Everything())
	out := make([]plan.Node, 0, len(list))
	for _, n := range list {
		out = append(out, k8s.PlanNode(n))
	}
	return out
}

func (s *Speaker) services() []plan.Service {
	svcs, _ := s.svcs.List(labels.Everything())
	slices.SortFunc(svcs, func(a, b *corev1.Service) int { return cmp.Compare(k8s.Key(a), k8s.Key(b)) })
	slicesLister := s.slices
	var out []plan.Service
	for _, svc := range svcs {
		ips := k8s.IngressIPs(svc)
		if !k8s.Manages(svc, s.opts.LoadBalancerClass) || len(ips) == 0 {
			continue
		}
		eps, _ := slicesLister.EndpointSlices(svc.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
		out = append(out, k8s.PlanService(svc, ips, eps))
	}
	return out
}
