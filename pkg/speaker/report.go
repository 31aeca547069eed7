package speaker

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/plan"
	"github.com/heraldlb/herald/pkg/runner"
)

// reportPart tells people what the newest plan changed: log lines, metrics and Events.
// The Events go through the broadcaster's queue; a slow API server delays this part
// alone.
type reportPart struct {
	runner *runner.Runner
	// Touched only on the runner's goroutine (and by Run's shutdown after it ends):
	seq         uint64
	announced   map[string]bool // "service ip" -> this node announces it
	noForwarder map[string]bool // Services told that no node can forward their pool
	refused     map[string]bool // "service ip" -> this node refuses its traffic (nowhere to send it)
}

func (r *reportPart) init() {
	r.announced, r.noForwarder, r.refused = map[string]bool{}, map[string]bool{}, map[string]bool{}
}

func (s *Speaker) syncReport(_ context.Context, full bool) error {
	snap := s.latest.Load()
	if snap == nil || (!full && snap.seq == s.status.seq) {
		return nil
	}
	s.report(snap.d, snap.in)
	s.status.seq = snap.seq
	return nil
}

// report records, on change only, which Service addresses this node took or gave up,
// and, from one speaker only (the first live one by name), the Services whose pool
// forwards while no live node can.
func (s *Speaker) report(d plan.Desired, in plan.Input) {
	now := map[string]bool{}
	svcLister := s.svcs
	say := func(svcKey string, a k8s.Announcement) {
		s.metrics.OwnershipChanges.Inc()
		if a.Announcing {
			s.log.Info("announcing", "service", svcKey, "ip", a.IP, "mode", a.Mode)
		} else {
			s.log.Info("stopped announcing", "service", svcKey, "ip", a.IP)
		}
		if svc := getService(svcLister, svcKey); svc != nil {
			s.events.Event(svc, corev1.EventTypeNormal, a.Reason(), a.Message())
		}
	}
	for _, dec := range d.Decisions {
		if !dec.Announce {
			continue
		}
		key := dec.Service + " " + dec.IP.String()
		now[key] = true
		if !s.status.announced[key] {
			say(dec.Service, k8s.Announcement{Node: s.opts.NodeName, IP: dec.IP, Mode: dec.Protocol.String(), Announcing: true})
		}
	}
	for _, key := range slices.Sorted(maps.Keys(s.status.announced)) {
		if !now[key] {
			svcKey, ip, _ := strings.Cut(key, " ")
			say(svcKey, k8s.Announcement{Node: s.opts.NodeName, IP: netip.MustParseAddr(ip)})
		}
	}
	s.status.announced = now
	s.reportRefused(d, in)
	s.reportNoForwarder(d, in)
}

// reportRefused warns, once for as long as it lasts, on each Service address whose
// traffic this node refuses because it has nowhere to send it.
func (s *Speaker) reportRefused(d plan.Desired, in plan.Input) {
	now := map[string]bool{}
	svcLister := s.svcs
	for _, dec := range d.Decisions {
		if !dec.Refused {
			continue
		}
		key := dec.Service + " " + dec.IP.String()
		now[key] = true
		if s.status.refused[key] {
			continue
		}
		mode := config.ForwardingIPVS
		if pool, ok := in.Config.Pool(dec.Pool); ok {
			mode = pool.Forwarding()
		}
		s.log.Warn("no ready endpoint on a live node: the Service's traffic is refused", "service", dec.Service, "ip", dec.IP, "pool", dec.Pool)
		if svc := getService(svcLister, dec.Service); svc != nil {
			s.events.Eventf(svc, corev1.EventTypeWarning, k8s.ReasonNoLiveEndpoints,
				"node %s refuses traffic to %s (TCP reset, ICMP port unreachable): the Service has no ready endpoint on a live node to send it to (pool %q, forwarding: %s)",
				s.opts.NodeName, dec.IP, dec.Pool, mode)
		}
	}
	for key := range s.status.refused {
		if !now[key] {
			svcKey, ip, _ := strings.Cut(key, " ")
			s.log.Info("the Service's traffic is no longer refused", "service", svcKey, "ip", ip)
		}
	}
	s.status.refused = now
}

// reportNoForwarder warns on each Service of a pool that forwards, once for as long as
// no live node can forward (recorded by the first live speaker by name, so once).
func (s *Speaker) reportNoForwarder(d plan.Desired, in plan.Input) {
	if in.Config == nil || len(in.Members) == 0 || in.Members[0] != s.opts.NodeName {
		return
	}
	anyForwarder := false
	for _, m := range in.Members {
		anyForwarder = anyForwarder || in.Forwarders[m]
	}
	now := map[string]bool{}
	if !anyForwarder {
		svcLister := s.svcs
		for _, dec := range d.Decisions {
			pool, ok := in.Config.Pool(dec.Pool)
			if !ok || !pool.Forward || now[dec.Service] {
				continue
			}
			now[dec.Service] = true
			if s.status.noForwarder[dec.Service] {
				continue
			}
			if svc := getService(svcLister, dec.Service); svc != nil {
				s.events.Eventf(svc, corev1.EventTypeWarning, k8s.ReasonNoNodeCanForward,
					"no node can forward with IPVS, so nobody announces %s: pool %q forwards (forwarding: ipvs); load ip_vs on the nodes or set forwarding: none", dec.IP, pool.Name)
			}
			s.log.Warn("no node can forward: the Service's address is not announced", "service", dec.Service, "ip", dec.IP, "pool", pool.Name)
		}
	}
	s.status.noForwarder = now
}
