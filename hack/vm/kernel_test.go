package main

import (
	"net"
	"syscall"
	"testing"

	"github.com/moby/ipvs"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/forward"
)

// TestIPVSInVM checks, on Debian's kernel inside the VM, that the netlink IPVS library
// programs the kernel: a virtual service per scheduler Herald offers, with two real
// servers each, read back as written, then removed.
func TestIPVSInVM(t *testing.T) {
	netlab.RequireVM(t)
	h, err := ipvs.New("")
	if err != nil {
		t.Fatalf("open IPVS netlink: %v", err)
	}
	defer h.Close()
	for i, sched := range forward.Schedulers {
		svc := &ipvs.Service{
			Address: net.IPv4(192, 168, 10, byte(90+i)), Protocol: syscall.IPPROTO_TCP, Port: 8090,
			AddressFamily: syscall.AF_INET, SchedName: sched, Netmask: 0xffffffff,
		}
		if err := h.NewService(svc); err != nil {
			t.Fatalf("scheduler %s: add virtual service: %v", sched, err)
		}
		for _, rs := range []string{"192.168.10.11", "192.168.10.12"} {
			if err := h.NewDestination(svc, &ipvs.Destination{Address: net.ParseIP(rs), Port: 30080, Weight: 1, AddressFamily: syscall.AF_INET}); err != nil {
				t.Fatalf("scheduler %s: add real server %s: %v", sched, rs, err)
			}
		}
	}
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != len(forward.Schedulers) {
		t.Fatalf("%d virtual services in the kernel, want %d", len(svcs), len(forward.Schedulers))
	}
	for _, s := range svcs {
		dests, err := h.GetDestinations(s)
		if err != nil || len(dests) != 2 {
			t.Errorf("%s:%d (%s): %d real servers, %v; want 2", s.Address, s.Port, s.SchedName, len(dests), err)
		}
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	if svcs, _ := h.GetServices(); len(svcs) != 0 {
		t.Errorf("%d virtual services left after flushing", len(svcs))
	}
}
