// Package forward is the vocabulary of IPVS forwarding, shared by the plan and the
// forwarder: virtual services, their real servers and the schedulers Herald offers. It
// does no I/O; package ipvs (pkg/forward/ipvs) programs the kernel with it.
package forward

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/heraldlb/herald/pkg/transport"
)

// Schedulers are the IPVS schedulers a Service may ask for; the first is the default.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq", "mh"}

// DefaultScheduler is the scheduler of a Service that asks for none.
const DefaultScheduler = "rr"

// KnownScheduler reports whether s is one of Schedulers.
func KnownScheduler(s string) bool { return slices.Contains(Schedulers, s) }

// Service is one virtual service: traffic to VIP:Port/Proto is spread over RealServers.
type Service struct {
	VIP         netip.Addr
	Port        uint16
	Proto       transport.Protocol
	Scheduler   string        // one of Schedulers; "" is DefaultScheduler
	Persistence time.Duration // 0: none; else a client keeps its real server this long (ClientIP affinity)
	// SourceRanges, when set, are the only sources allowed (loadBalancerSourceRanges),
	// of the VIP's family.
	SourceRanges []netip.Prefix
	// Masquerade sends traffic to the real servers from this node's address, so replies
	// come back through it (externalTrafficPolicy Cluster); Local keeps the client's.
	Masquerade  bool
	RealServers []RealServer // sorted
}

// Key identifies a virtual service.
type Key struct {
	VIP   netip.Addr
	Port  uint16
	Proto transport.Protocol
}

// Key returns the service's identity.
func (s Service) Key() Key { return Key{s.VIP, s.Port, s.Proto} }

// Compare orders keys by address, protocol, port.
func (k Key) Compare(o Key) int {
	return cmp.Or(k.VIP.Compare(o.VIP), cmp.Compare(k.Proto, o.Proto), cmp.Compare(k.Port, o.Port))
}

// RealServer is where a virtual service sends traffic.
type RealServer struct {
	Addr   netip.Addr
	Port   uint16
	Weight int // 0 means 1
}

// Compare orders real servers by address, then port.
func (r RealServer) Compare(o RealServer) int {
	return cmp.Or(r.Addr.Compare(o.Addr), cmp.Compare(r.Port, o.Port))
}

// Sort orders services by their keys.
func Sort(ss []Service) {
	slices.SortFunc(ss, func(a, b Service) int { return a.Key().Compare(b.Key()) })
}
