package announce

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/ndp"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// icmp6 is one link's ICMPv6 socket for neighbour discovery. It names the interface by
// index only, never by name as an IPv6 zone: Go resolves zone names through one
// process-wide cache, refreshed at most once a minute, which goes on naming the old
// index for a minute after an interface is re-created under the same name.
type icmp6 struct {
	c     *ipv6.PacketConn
	index int
}

// listenICMP6 opens the socket on ifi: bound to "::" and (where the kernel can) to ifi's
// index, reading Neighbor Solicitations and Advertisements with their interface and hop
// limit, sending with hop limit 255.
func listenICMP6(ifi net.Interface) (*icmp6, error) {
	pc, err := net.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("open ICMPv6 socket: %w", err)
	}
	c := &icmp6{c: ipv6.NewPacketConn(pc), index: ifi.Index}
	fail := func(op string, err error) (*icmp6, error) {
		_ = pc.Close()
		return nil, fmt.Errorf("ICMPv6 socket for %s: %s: %w", ifi.Name, op, err)
	}
	if rc, err := pc.(*net.IPConn).SyscallConn(); err == nil {
		// Spares reading every other interface's messages; reads are filtered by index
		// all the same, so a kernel without SO_BINDTOIFINDEX (before 5.0) only costs work.
		_ = rc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, ifi.Index)
		})
	}
	if err := c.c.SetControlMessage(ipv6.FlagInterface|ipv6.FlagHopLimit, true); err != nil {
		return fail("ask for interface and hop limit", err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeNeighborSolicitation)
	f.Accept(ipv6.ICMPTypeNeighborAdvertisement)
	if err := c.c.SetICMPFilter(&f); err != nil {
		return fail("set ICMPv6 filter", err)
	}
	if err := c.c.SetMulticastHopLimit(255); err != nil {
		return fail("set multicast hop limit", err)
	}
	if err := c.c.SetHopLimit(255); err != nil {
		return fail("set hop limit", err)
	}
	return c, nil
}

// read returns the next message that arrived on the socket's interface, with its source
// and hop limit (-1 when the kernel did not say).
func (c *icmp6) read(buf []byte) (n int, src netip.Addr, hopLimit int, err error) {
	for {
		n, cm, from, err := c.c.ReadFrom(buf)
		if err != nil {
			return 0, netip.Addr{}, 0, err
		}
		if cm == nil || cm.IfIndex != c.index {
			continue // another interface's
		}
		hopLimit = cm.HopLimit
		if hopLimit == 0 {
			hopLimit = -1 // a hop limit of 0 is never delivered: the kernel did not say
		}
		if ia, ok := from.(*net.IPAddr); ok {
			src, _ = netip.AddrFromSlice(ia.IP)
		}
		return n, src.Unmap(), hopLimit, nil
	}
}

// writeTo sends m to dst out of the socket's interface, hop limit 255; the kernel picks
// the source address and fills in the checksum.
func (c *icmp6) writeTo(m ndp.Message, dst netip.Addr) error {
	b, err := ndp.MarshalMessage(m)
	if err != nil {
		return err
	}
	_, err = c.c.WriteTo(b, &ipv6.ControlMessage{IfIndex: c.index, HopLimit: 255}, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

// join and leave join and leave a multicast group on the socket's interface.
func (c *icmp6) join(group netip.Addr) error {
	return c.c.JoinGroup(&net.Interface{Index: c.index}, &net.IPAddr{IP: group.AsSlice()})
}

func (c *icmp6) leave(group netip.Addr) error {
	return c.c.LeaveGroup(&net.Interface{Index: c.index}, &net.IPAddr{IP: group.AsSlice()})
}

func (c *icmp6) Close() error { return c.c.Close() }
