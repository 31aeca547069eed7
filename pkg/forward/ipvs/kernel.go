package ipvs

import (
	"net/netip"
	"slices"
	"time"

	"github.com/heraldlb/herald/pkg/forward"
)

// Kernel is what the Forwarder needs of the kernel: IPVS virtual services and their
// destinations, the addresses on herald0, Herald's nftables tables and the forwarding
// sysctls. Every verb is idempotent where the kernel allows it: adding what exists and
// removing what is gone succeed. Linux is the implementation; forwardtest.Kernel is a
// stateful fake. The Forwarder calls it from one goroutine at a time.
type Kernel interface {
	// Services returns every virtual service, Herald's or not.
	Services() ([]VirtualService, error)
	AddService(VirtualService) error
	UpdateService(VirtualService) error
	DelService(forward.Key) error
	Destinations(forward.Key) ([]Destination, error)
	AddDestination(forward.Key, Destination) error
	UpdateDestination(forward.Key, Destination) error
	DelDestination(forward.Key, Destination) error
	// Apply makes changes in order, each as its verb above would, and returns the error
	// of each (nil where it succeeded), or nil when all succeeded. Linux sends them many
	// to a system call.
	Apply([]Change) []error

	// LinkAddrs returns the addresses on herald0 (link-local ones left out); none when
	// the link does not exist.
	LinkAddrs() ([]netip.Addr, error)
	// EnsureLink creates herald0 if it is missing, and brings it up.
	EnsureLink() error
	AddAddr(netip.Addr) error
	DelAddr(netip.Addr) error
	// AddAddrs and DelAddrs do the same for many addresses, as few system calls as they
	// can; an error names each address that failed.
	AddAddrs([]netip.Addr) error
	DelAddrs([]netip.Addr) error

	// HasTables reports whether Herald's nftables tables exist.
	HasTables() (bool, error)
	// SetTables replaces Herald's nftables tables whole, in one transaction.
	SetTables(Tables) error
	DelTables() error

	// Sysctls turns on what IPVS in NAT mode needs (forwarding, conntrack for IPVS).
	Sysctls() error
}

// VirtualService is an IPVS virtual service as the kernel holds it.
type VirtualService struct {
	Key         forward.Key
	Scheduler   string
	Persistence time.Duration // 0: not persistent
	// Foreign marks a service Herald can never own (a firewall-mark service): left alone.
	Foreign bool
}

// Destination is one real server of a virtual service.
type Destination struct {
	Addr   netip.Addr
	Port   uint16
	Weight int
}

// Tables is what Herald's nftables tables hold.
type Tables struct {
	// Silence are the IPv4 addresses the kernel must not answer ARP requests for (they
	// sit on herald0, and Linux would answer for them on every interface).
	Silence []netip.Addr
	// Sources restrict virtual services to their loadBalancerSourceRanges.
	Sources []SourceRule
	// Masquerade are the addresses whose traffic leaves for the real servers with this
	// node's address as its source.
	Masquerade []netip.Addr
	// Reject are the virtual services with no real server: their traffic is refused at
	// once (a TCP reset, an ICMP port unreachable), as kube-proxy does for a Service
	// without endpoints, rather than left to time out.
	Reject []forward.Key
}

// SourceRule admits only Allowed sources to one virtual service.
type SourceRule struct {
	Key     forward.Key
	Allowed []netip.Prefix
}

// Empty reports whether the tables hold nothing.
func (t Tables) Empty() bool {
	return len(t.Silence) == 0 && len(t.Sources) == 0 && len(t.Masquerade) == 0 && len(t.Reject) == 0
}

// Equal reports whether two table contents are the same.
func (t Tables) Equal(o Tables) bool {
	return slices.Equal(t.Silence, o.Silence) && slices.Equal(t.Masquerade, o.Masquerade) && slices.Equal(t.Reject, o.Reject) &&
		slices.EqualFunc(t.Sources, o.Sources, func(a, b SourceRule) bool { return a.Key == b.Key && slices.Equal(a.Allowed, b.Allowed) })
}

// tablesFor returns the tables that services need, in a canonical order.
func tablesFor(services []forward.Service) Tables {
	var t Tables
	silence, masq := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, s := range services {
		if s.VIP.Is4() {
			silence[s.VIP] = true
		}
		if s.Masquerade {
			masq[s.VIP] = true
		}
		if len(s.RealServers) == 0 {
			t.Reject = append(t.Reject, s.Key())
		}
		var allowed []netip.Prefix
		for _, p := range s.SourceRanges {
			if p.Addr().Is4() == s.VIP.Is4() {
				allowed = append(allowed, p.Masked())
			}
		}
		if len(allowed) > 0 {
			t.Sources = append(t.Sources, SourceRule{Key: s.Key(), Allowed: allowed})
		}
	}
	t.Silence = sortedAddrs(silence)
	t.Masquerade = sortedAddrs(masq)
	slices.SortFunc(t.Sources, func(a, b SourceRule) int { return a.Key.Compare(b.Key) })
	slices.SortFunc(t.Reject, forward.Key.Compare)
	return t
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	if len(out) == 0 {
		return nil
	}
	return out
}
