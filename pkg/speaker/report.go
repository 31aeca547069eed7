package speaker

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

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
}

func (r *reportPart) init() { r.announced, r.noForwarder = map[string]bool{}, map[string]bool{} }

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
	s.reportNoForwarder(d, in)
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
