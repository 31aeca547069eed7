package ipvs_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	lvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/forward/forwardtest"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/transport"
)

// mobyKernel programs IPVS as Herald did before it spoke netlink itself: moby/ipvs, one
// request and one answer per change, and the addresses on herald0 one at a time. It is
// the benchmarks' reference, and an independent reader of what Linux programs.
type mobyKernel struct {
	*ipvs.Linux
	h *lvs.Handle
}

func newMoby(t testing.TB) *mobyKernel {
	t.Helper()
	h, err := lvs.New("")
	if err != nil {
		t.Fatalf("moby/ipvs: %v", err)
	}
	t.Cleanup(h.Close)
	return &mobyKernel{Linux: linux(t), h: h}
}

func lvsService(k forward.Key) *lvs.Service {
	s := &lvs.Service{Address: net.IP(k.VIP.AsSlice()), Protocol: uint16(k.Proto), Port: k.Port,
		AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	if k.VIP.Is6() {
		s.AddressFamily, s.Netmask = syscall.AF_INET6, 128
	}
	return s
}

func lvsFull(v ipvs.VirtualService) *lvs.Service {
	s := lvsService(v.Key)
	s.SchedName = v.Scheduler
	if v.Persistence > 0 {
		s.Flags, s.Timeout = 1, uint32(v.Persistence.Seconds())
	}
	return s
}

func lvsDest(d ipvs.Destination) *lvs.Destination {
	out := &lvs.Destination{Address: net.IP(d.Addr.AsSlice()), Port: d.Port, Weight: max(d.Weight, 1),
		ConnectionFlags: lvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET}
	if d.Addr.Is6() {
		out.AddressFamily = syscall.AF_INET6
	}
	return out
}

func (m *mobyKernel) Services() ([]ipvs.VirtualService, error) {
	have, err := m.h.GetServices()
	if err != nil {
		return nil, err
	}
	var out []ipvs.VirtualService
	for _, s := range have {
		vip, ok := netip.AddrFromSlice(s.Address)
		v := ipvs.VirtualService{Key: forward.Key{VIP: vip.Unmap(), Port: s.Port, Proto: transport.Protocol(s.Protocol)},
			Scheduler: s.SchedName, Foreign: !ok || s.FWMark != 0}
		if s.Flags&1 != 0 {
			v.Persistence = time.Duration(s.Timeout) * time.Second
		}
		out = append(out, v)
	}
	return out, nil
}

func (m *mobyKernel) Destinations(k forward.Key) ([]ipvs.Destination, error) {
	ds, err := m.h.GetDestinations(lvsService(k))
	if err != nil {
		return nil, err
	}
	var out []ipvs.Destination
	for _, d := range ds {
		a, _ := netip.AddrFromSlice(d.Address)
		out = append(out, ipvs.Destination{Addr: a.Unmap(), Port: d.Port, Weight: d.Weight})
	}
	return out, nil
}

func (m *mobyKernel) Apply(changes []ipvs.Change) []error {
	var errs []error
	for i, c := range changes {
		var err error
		switch c.Op {
		case ipvs.OpAddService:
			if err = m.h.NewService(lvsFull(c.Service)); errors.Is(err, syscall.EEXIST) {
				err = m.h.UpdateService(lvsFull(c.Service))
			}
		case ipvs.OpUpdateService:
			err = m.h.UpdateService(lvsFull(c.Service))
		case ipvs.OpDelService:
			if err = m.h.DelService(lvsService(c.Service.Key)); errors.Is(err, syscall.ESRCH) {
				err = nil
			}
		case ipvs.OpAddDestination:
			if err = m.h.NewDestination(lvsService(c.Service.Key), lvsDest(c.Dest)); errors.Is(err, syscall.EEXIST) {
				err = m.h.UpdateDestination(lvsService(c.Service.Key), lvsDest(c.Dest))
			}
		case ipvs.OpUpdateDestination:
			err = m.h.UpdateDestination(lvsService(c.Service.Key), lvsDest(c.Dest))
		case ipvs.OpDelDestination:
			if err = m.h.DelDestination(lvsService(c.Service.Key), lvsDest(c.Dest)); errors.Is(err, syscall.ENOENT) {
				err = nil
			}
		}
		if err != nil {
			if errs == nil {
				errs = make([]error, len(changes))
			}
			errs[i] = err
		}
	}
	return errs
}

func hostAddr(ip netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
	if ip.Is6() {
		a.Flags = syscall.IFA_F_NODAD
	}
	return a
}

func (m *mobyKernel) AddAddrs(addrs []netip.Addr) error {
	var errs []error
	for _, a := range addrs {
		link, err := netlink.LinkByName(ipvs.LinkName)
		if err == nil {
			if err = netlink.AddrAdd(link, hostAddr(a)); errors.Is(err, syscall.EEXIST) {
				err = nil
			}
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *mobyKernel) DelAddrs(addrs []netip.Addr) error {
	var errs []error
	for _, a := range addrs {
		link, err := netlink.LinkByName(ipvs.LinkName)
		if err == nil {
			if err = netlink.AddrDel(link, hostAddr(a)); errors.Is(err, syscall.EADDRNOTAVAIL) {
				err = nil
			}
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// What Linux programs, moby/ipvs reads back alike, and the other way round: IPv4 and
// IPv6, persistence, weights, every scheduler; and changes made in batches larger than
// one system call's.
func TestLinuxAgreesWithMobyInVM(t *testing.T) {
	l := linux(t)
	m := newMoby(t)
	var svcs []forward.Service
	for i, sched := range forward.Schedulers {
		s := forward.Service{VIP: addr(fmt.Sprintf("192.168.20.%d", 100+i)), Port: 80, Proto: transport.TCP, Scheduler: sched}
		if i%2 == 0 {
			s.Persistence = time.Duration(i+1) * time.Minute
		}
		for r := range 3 {
			s.RealServers = append(s.RealServers, rs(fmt.Sprintf("10.1.%d.%d", i, r+1), 30080, r+1))
		}
		svcs = append(svcs, s)
	}
	svcs = append(svcs, forward.Service{VIP: addr("fd10::7"), Port: 53, Proto: transport.UDP, Persistence: time.Hour,
		RealServers: []forward.RealServer{rs("fd44::1", 30053, 2), rs("fd44::2", 30053, 1)}},
		forward.Service{VIP: addr("192.168.20.8"), Port: 9, Proto: transport.SCTP, RealServers: []forward.RealServer{rs("10.2.0.1", 9, 1)}})
	svcs = append(svcs, manyServices(200)...) // 4,600 changes: several batches
	wide := func(a netip.Addr) bool { return owns(a) || (a.Is4() && a.As4()[0] == 192 && a.As4()[1] == 168) }
	for _, k := range []ipvs.Kernel{l, m} {
		f := newForwarder(t, k, wide)
		if err := f.Set(svcs); err != nil {
			t.Fatalf("%T: %v", k, err)
		}
		viaLinux, err := forwardtest.Dump(l)
		if err != nil {
			t.Fatal(err)
		}
		viaMoby, err := forwardtest.Dump(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(viaLinux) != len(svcs) || !slices.Equal(viaLinux, viaMoby) {
			t.Errorf("programmed by %T: %d services; Linux and moby/ipvs read different states:\n%v\n%v", k, len(viaLinux), first(viaLinux), first(viaMoby))
		}
		addrs, err := l.LinkAddrs()
		if err != nil || len(addrs) != len(forward.Schedulers)+2+200 {
			t.Errorf("programmed by %T: %d addresses on %s (%v), want %d", k, len(addrs), ipvs.LinkName, err, len(forward.Schedulers)+2+200)
		}
		if err := f.Set(nil); err != nil {
			t.Fatal(err)
		}
		if got, _ := forwardtest.Dump(l); len(got) != 0 {
			t.Errorf("after emptying, IPVS holds %v", first(got))
		}
	}
}

func first(lines []string) []string { return lines[:min(len(lines), 14)] }
