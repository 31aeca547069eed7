package forward

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/moby/ipvs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
	"github.com/heraldlb/herald/pkg/plan"
)

// Proto is a transport protocol IPVS balances.
type Proto uint16

// The protocols.
const (
	TCP  Proto = syscall.IPPROTO_TCP
	UDP  Proto = syscall.IPPROTO_UDP
	SCTP Proto = 132 // IPPROTO_SCTP
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("Proto(%d)", uint16(p))
}

// RealServer is where a virtual service sends traffic.
type RealServer struct {
	Addr   netip.Addr
	Port   uint16
	Weight int // default 1
}

// Service is one virtual service: traffic to VIP:Port/Proto is spread over RealServers.
type Service struct {
	VIP         netip.Addr
	Port        uint16
	Proto       Proto
	Scheduler   string        // default rr
	Persistence time.Duration // 0: none; else the client keeps its real server this long (ClientIP affinity)
	RealServers []RealServer
	// SourceRanges, when set, are the only sources allowed (loadBalancerSourceRanges).
	SourceRanges []netip.Prefix
	// Masquerade sends traffic to the real servers from this node's address, so replies
	// come back through it (externalTrafficPolicy Cluster); Local keeps the client's address.
	Masquerade bool
}

type key struct {
	vip   netip.Addr
	port  uint16
	proto Proto
}

func (s Service) key() key { return key{s.VIP, s.Port, s.Proto} }

// LinkName is the dummy link that holds the announced addresses.
const LinkName = "herald0"

// persistentFlag is IP_VS_SVC_F_PERSISTENT.
const persistentFlag = 0x1

// Options configure a Forwarder.
type Options struct {
	// Owns reports whether an address is Herald's (in one of its pools); only those are
	// ever touched. Required.
	Owns       func(netip.Addr) bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: a private registry
}

// Forwarder programs IPVS and the addresses on herald0 in the current network namespace.
type Forwarder struct {
	owns    func(netip.Addr) bool
	log     *slog.Logger
	metrics *metrics.Forward
	ipvs    *ipvs.Handle
	synced  bool // the kernel has been reconciled in full since New or Resync
	// onLink are the addresses herald0 held when the last full reconciliation began:
	// Herald's too, even if no pool holds them any more (a pool deleted from the config).
	onLink  map[netip.Addr]bool
	sysctls bool // the sysctls were set since New or Resync

	applied map[key]Service // what the last successful Set put in place
	nftKey  string          // the nftables inputs last programmed
}

// New opens the IPVS netlink socket; it fails where the kernel has no IPVS, which makes
// the node ineligible for pools that forward.
func New(opts Options) (*Forwarder, error) {
	if opts.Owns == nil {
		return nil, errors.New("forward: Options.Owns is required")
	}
	h, err := ipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("IPVS is not available (is the ip_vs module loaded?): %w", err)
	}
	if _, err := h.GetServices(); err != nil {
		h.Close()
		return nil, fmt.Errorf("IPVS is not available (is the ip_vs module loaded?): %w", err)
	}
	return &Forwarder{owns: opts.Owns, log: logging.OrDiscard(opts.Logger), ipvs: h,
		metrics: metrics.NewForward(metrics.OrPrivate(opts.Registerer))}, nil
}

// Close releases the netlink socket; the kernel state stays.
func (f *Forwarder) Close() { f.ipvs.Close() }

// Resync makes the next Set compare with the kernel in full rather than with what was
// last applied, undoing changes made behind Herald's back (kube-proxy in IPVS mode may
// delete services it did not create). The speaker calls it periodically.
func (f *Forwarder) Resync() { f.synced, f.sysctls = false, false }

// Set makes IPVS and herald0 hold exactly services (and their addresses), among the
// addresses Herald owns. After the first, a Set touches only what differs from the last.
// The sysctls that forwarding needs are set once there is something to forward.
func (f *Forwarder) Set(services []Service) error {
	start := time.Now()
	err := f.set(services)
	f.metrics.ApplySeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		f.metrics.Errors.Inc()
		return err
	}
	rs := 0
	for _, s := range services {
		rs += len(s.RealServers)
	}
	f.metrics.VirtualServices.Set(float64(len(services)))
	f.metrics.RealServers.Set(float64(rs))
	return nil
}

func (f *Forwarder) set(services []Service) error {
	if !f.sysctls && len(services) > 0 {
		if err := Sysctls(); err != nil {
			return err
		}
		f.sysctls = true
	}
	want := map[key]Service{}
	vips := map[netip.Addr]bool{}
	for _, s := range services {
		if !f.owns(s.VIP) {
			return fmt.Errorf("%s is in no pool of Herald's: refusing to program it", s.VIP)
		}
		s.Scheduler = cmp.Or(s.Scheduler, "rr")
		if !slices.Contains(plan.Schedulers, s.Scheduler) {
			return fmt.Errorf("%s:%d/%s: unknown IPVS scheduler %q (want one of %v)", s.VIP, s.Port, s.Proto, s.Scheduler, plan.Schedulers)
		}
		want[s.key()] = s
		vips[s.VIP] = true
	}
	if !f.synced {
		f.onLink = herald0Addrs()
	}
	var errs []error
	if nk := nftKey(services); !f.synced || nk != f.nftKey {
		// The kernel must not answer ARP for an address before it is on herald0.
		err := errors.Join(suppressARP(slices.Collect(maps.Keys(vips))), programNAT(services), f.setAddresses(vips))
		if err != nil {
			errs = append(errs, err)
		} else {
			f.nftKey = nk
		}
	}
	if f.synced {
		return errors.Join(append(errs, f.setIncremental(want))...)
	}
	have, err := f.ipvs.GetServices()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list IPVS services: %w", err))...)
	}
	for _, hs := range have {
		vip, ok := netip.AddrFromSlice(hs.Address)
		if !ok || hs.FWMark != 0 || !f.mine(vip.Unmap()) {
			continue // not Herald's: kube-proxy's, or another tool's
		}
		k := key{vip.Unmap(), hs.Port, Proto(hs.Protocol)}
		ws, wanted := want[k]
		if !wanted {
			if err := f.ipvs.DelService(hs); err != nil {
				errs = append(errs, fmt.Errorf("remove %s:%d/%s: %w", k.vip, k.port, k.proto, err))
			} else {
				f.log.Info("IPVS service removed", "ip", k.vip, "port", k.port, "protocol", k.proto.String())
			}
			continue
		}
		if err := f.update(hs, ws, f.applied[k].RealServers); err != nil {
			errs = append(errs, err)
		}
		delete(want, k)
	}
	for k, s := range want {
		if _, had := f.applied[k]; had {
			f.restored("virtual_service", s.VIP, s.Port, s.Proto, netip.Addr{}, 0)
		}
		if err := f.add(s); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		f.synced = true
		f.applied = map[key]Service{}
		for _, s := range services {
			s.Scheduler = cmp.Or(s.Scheduler, "rr")
			f.applied[s.key()] = s
		}
	}
	return errors.Join(errs...)
}

// setIncremental applies the difference between want and what was last applied. On any
// error the next Set reconciles in full.
func (f *Forwarder) setIncremental(want map[key]Service) error {
	var errs []error
	for k, old := range f.applied {
		if _, ok := want[k]; !ok {
			if err := f.ipvs.DelService(ipvsService(old)); err != nil {
				errs = append(errs, fmt.Errorf("remove %s:%d/%s: %w", k.vip, k.port, k.proto, err))
			}
		}
	}
	for k, s := range want {
		old, ok := f.applied[k]
		switch {
		case !ok:
			if err := f.add(s); err != nil {
				errs = append(errs, err)
			}
		case !sameService(old, s):
			if err := f.update(ipvsService(old), s, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		f.synced = false
		return errors.Join(errs...)
	}
	f.applied = want
	return nil
}

func sameService(a, b Service) bool {
	return a.Scheduler == b.Scheduler && a.Persistence == b.Persistence && a.Masquerade == b.Masquerade &&
		slices.Equal(a.RealServers, b.RealServers) && slices.Equal(a.SourceRanges, b.SourceRanges)
}

// nftKey summarises what the nftables tables and herald0 depend on, so that they are
// rebuilt only when it changes.
func nftKey(services []Service) string {
	var parts []string
	for _, s := range services {
		p := fmt.Sprintf("%s/%d/%d/%v", s.VIP, s.Port, s.Proto, s.Masquerade)
		for _, r := range s.SourceRanges {
			p += "," + r.String()
		}
		parts = append(parts, p)
	}
	slices.Sort(parts)
	return strings.Join(parts, ";")
}

func ipvsService(s Service) *ipvs.Service {
	svc := &ipvs.Service{
		Address: net.IP(s.VIP.AsSlice()), Protocol: uint16(s.Proto), Port: s.Port,
		SchedName: s.Scheduler, AddressFamily: syscall.AF_INET, Netmask: 0xffffffff,
	}
	if s.VIP.Is6() {
		svc.AddressFamily, svc.Netmask = syscall.AF_INET6, 128
	}
	if s.Persistence > 0 {
		svc.Flags, svc.Timeout = persistentFlag, uint32(s.Persistence.Seconds())
	}
	return svc
}

func destination(r RealServer) *ipvs.Destination {
	d := &ipvs.Destination{Address: net.IP(r.Addr.AsSlice()), Port: r.Port, Weight: cmp.Or(r.Weight, 1),
		ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET}
	if r.Addr.Is6() {
		d.AddressFamily = syscall.AF_INET6
	}
	return d
}

func (f *Forwarder) add(s Service) error {
	svc := ipvsService(s)
	if err := f.ipvs.NewService(svc); err != nil {
		return fmt.Errorf("add %s:%d/%s: %w", s.VIP, s.Port, s.Proto, err)
	}
	f.log.Info("IPVS service added", "ip", s.VIP, "port", s.Port, "protocol", s.Proto.String(), "scheduler", s.Scheduler, "realServers", len(s.RealServers))
	var errs []error
	for _, r := range s.RealServers {
		if err := f.ipvs.NewDestination(svc, destination(r)); err != nil {
			errs = append(errs, fmt.Errorf("add real server %s:%d to %s:%d/%s: %w", r.Addr, r.Port, s.VIP, s.Port, s.Proto, err))
		}
	}
	return errors.Join(errs...)
}

// restored says that state Herald had programmed was found gone and put back.
func (f *Forwarder) restored(kind string, vip netip.Addr, port uint16, proto Proto, rs netip.Addr, rsPort uint16) {
	f.metrics.Restored.WithLabelValues(kind).Inc()
	args := []any{"kind", kind, "ip", vip, "port", port, "protocol", proto.String()}
	if rs.IsValid() {
		args = append(args, "realServer", netip.AddrPortFrom(rs, rsPort))
	}
	f.log.Warn("IPVS state Herald programmed was deleted by someone else; restored (kube-proxy in IPVS mode needs --ipvs-exclude-cidrs with Herald's pools)", args...)
}

// update brings an existing virtual service and its real servers in line with s; had
// are the real servers last applied, to tell a restoration from an addition.
func (f *Forwarder) update(have *ipvs.Service, s Service, had []RealServer) error {
	svc := ipvsService(s)
	if have.SchedName != svc.SchedName || have.Flags&persistentFlag != svc.Flags&persistentFlag || (svc.Flags&persistentFlag != 0 && have.Timeout != svc.Timeout) {
		if err := f.ipvs.UpdateService(svc); err != nil {
			return fmt.Errorf("update %s:%d/%s: %w", s.VIP, s.Port, s.Proto, err)
		}
	}
	dests, err := f.ipvs.GetDestinations(have)
	if err != nil {
		return fmt.Errorf("list real servers of %s:%d/%s: %w", s.VIP, s.Port, s.Proto, err)
	}
	type dkey struct {
		addr netip.Addr
		port uint16
	}
	want := map[dkey]RealServer{}
	for _, r := range s.RealServers {
		want[dkey{r.Addr, r.Port}] = r
	}
	var errs []error
	for _, d := range dests {
		a, _ := netip.AddrFromSlice(d.Address)
		k := dkey{a.Unmap(), d.Port}
		r, ok := want[k]
		switch {
		case !ok:
			if err := f.ipvs.DelDestination(svc, d); err != nil {
				errs = append(errs, fmt.Errorf("remove real server %s:%d: %w", k.addr, k.port, err))
			}
		case d.Weight != cmp.Or(r.Weight, 1):
			if err := f.ipvs.UpdateDestination(svc, destination(r)); err != nil {
				errs = append(errs, fmt.Errorf("reweigh real server %s:%d: %w", k.addr, k.port, err))
			}
		}
		delete(want, k)
	}
	for _, r := range want {
		if slices.ContainsFunc(had, func(h RealServer) bool { return h.Addr == r.Addr && h.Port == r.Port }) {
			f.restored("real_server", s.VIP, s.Port, s.Proto, r.Addr, r.Port)
		}
		if err := f.ipvs.NewDestination(svc, destination(r)); err != nil {
			errs = append(errs, fmt.Errorf("add real server %s:%d: %w", r.Addr, r.Port, err))
		}
	}
	return errors.Join(errs...)
}

// mine reports whether an address is Herald's to remove: in a pool, or found on herald0.
func (f *Forwarder) mine(a netip.Addr) bool { return f.owns(a) || f.onLink[a] }

// herald0Addrs returns the addresses on herald0 (none when it does not exist).
func herald0Addrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		return out
	}
	addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out[ip.Unmap()] = true
		}
	}
	return out
}

// setAddresses makes herald0 (created if missing, up) hold exactly vips among Herald's
// addresses, each as a host route.
func (f *Forwarder) setAddresses(vips map[netip.Addr]bool) error {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: LinkName}}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("create %s: %w", LinkName, err)
		}
		if link, err = netlink.LinkByName(LinkName); err != nil {
			return fmt.Errorf("find %s: %w", LinkName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", LinkName, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", LinkName, err)
	}
	var errs []error
	have := map[netip.Addr]bool{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		have[ip] = true
		if !vips[ip] && f.mine(ip) {
			if err := netlink.AddrDel(link, &a); err != nil {
				errs = append(errs, fmt.Errorf("remove %s from %s: %w", ip, LinkName, err))
			}
		}
	}
	for ip := range vips {
		if have[ip] {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
		if ip.Is6() {
			addr.Flags = syscall.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", ip, LinkName, err))
		}
	}
	return errors.Join(errs...)
}

// Sysctls turns on what IPVS in NAT mode needs: forwarding, and conntrack for IPVS
// connections (so replies can be matched and masqueraded). A value already right is not
// written, so a speaker whose /proc/sys is read-only works where the host set them.
func Sysctls() error {
	for _, path := range []string{
		"/proc/sys/net/ipv4/ip_forward",
		"/proc/sys/net/ipv6/conf/all/forwarding",
		"/proc/sys/net/ipv4/vs/conntrack",
	} {
		if have, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(have)) == "1" {
			continue
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("set %s to 1 (forwarding needs it; set it on the host or run the speaker privileged): %w", path, err)
		}
	}
	return nil
}
