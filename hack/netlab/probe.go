package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Prober asks and listens for ARP and NDP on one interface of a namespace, as a client
// on the LAN does, from raw sockets opened inside the namespace.
type Prober struct {
	ns  *NS
	Ifi *net.Interface
	IP4 netip.Addr // the address it asks from
	arp *packet.Conn
	ns6 *ipv6.PacketConn // sends solicitations and reads advertisements, by interface index
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// NewProber opens the sockets on dev of ns, which must have the IPv4 address ip4 and be up.
func NewProber(t TB, ns *NS, dev string, ip4 netip.Addr) *Prober {
	t.Helper()
	p := &Prober{ns: ns, IP4: ip4}
	err := ns.Do(func() error {
		var err error
		if p.Ifi, err = net.InterfaceByName(dev); err != nil {
			return err
		}
		if p.arp, err = packet.Listen(p.Ifi, packet.Raw, 0x0806, nil); err != nil {
			return err
		}
		// No socket here names an interface by its name as an IPv6 zone: Go resolves zone
		// names through one process-wide cache, refreshed once a minute, which may hold
		// another namespace's interfaces (bind then fails with "no such device").
		if err := waitLinkLocal(p.Ifi); err != nil {
			return err
		}
		c, err := net.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		p.ns6 = ipv6.NewPacketConn(c)
		if err := p.ns6.SetControlMessage(ipv6.FlagInterface, true); err != nil {
			return err
		}
		return p.ns6.SetMulticastHopLimit(255)
	})
	if err != nil {
		t.Fatalf("prober on %s/%s: %v", ns.Name, dev, err)
	}
	t.Cleanup(func() { p.arp.Close(); p.ns6.Close() })
	return p
}

// waitLinkLocal waits up to 2 s for ifi's link-local address, which appears once the
// link is up; solicitations go out from it.
func waitLinkLocal(ifi *net.Interface) error {
	for range 100 {
		addrs, err := ifi.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() == nil && n.IP.IsLinkLocalUnicast() {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: no IPv6 link-local address after 2s", ifi.Name)
}

// ReadARP returns the first ARP packet within limit that match accepts.
func (p *Prober) ReadARP(limit time.Duration, match func(*arp.Packet) bool) (*arp.Packet, error) {
	deadline := time.Now().Add(limit)
	buf := make([]byte, 1514)
	for time.Now().Before(deadline) {
		_ = p.arp.SetReadDeadline(deadline)
		n, _, err := p.arp.ReadFrom(buf)
		if err != nil {
			return nil, err
		}
		var f ethernet.Frame
		var a arp.Packet
		if f.UnmarshalBinary(buf[:n]) != nil || a.UnmarshalBinary(f.Payload) != nil {
			continue
		}
		if match(&a) {
			return &a, nil
		}
	}
	return nil, errors.New("timed out")
}

// GrowARPBuffer sets the ARP socket's receive buffer to n bytes (for capturing bursts),
// beyond the system limit as root may.
func (p *Prober) GrowARPBuffer(n int) error {
	rc, err := p.arp.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	return serr
}

// ARPDrops returns how many frames the kernel dropped for the ARP socket so far.
func (p *Prober) ARPDrops() (uint32, error) {
	st, err := p.arp.Stats()
	if err != nil {
		return 0, err
	}
	return st.Drops, nil
}

// drainARP discards what the socket has buffered: replies to the client kernel's own
// requests land there too, and must not pass for answers to the next question.
func (p *Prober) drainARP() {
	buf := make([]byte, 1514)
	for {
		_ = p.arp.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, _, err := p.arp.ReadFrom(buf); err != nil {
			return
		}
	}
}

func (p *Prober) drainNDP() {
	buf := make([]byte, 1500)
	for {
		_ = p.ns6.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, _, _, err := p.ns6.ReadFrom(buf); err != nil {
			return
		}
	}
}

// SendARP broadcasts an ARP request for ip.
func (p *Prober) SendARP(ip netip.Addr) error { return p.broadcastARP(p.IP4, ip) }

// broadcastARP broadcasts an ARP request from sender (at the prober's interface) for target.
func (p *Prober) broadcastARP(sender, target netip.Addr) error {
	a, err := arp.NewPacket(arp.OperationRequest, p.Ifi.HardwareAddr, sender, net.HardwareAddr{0, 0, 0, 0, 0, 0}, target)
	if err != nil {
		return err
	}
	pb, err := a.MarshalBinary()
	if err != nil {
		return err
	}
	b, err := (&ethernet.Frame{Destination: broadcast, Source: p.Ifi.HardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}).MarshalBinary()
	if err != nil {
		return err
	}
	_, err = p.arp.WriteTo(b, &packet.Addr{HardwareAddr: broadcast})
	return err
}

// WriteFrame sends a raw Ethernet frame (for malformed input).
func (p *Prober) WriteFrame(b []byte) error {
	_, err := p.arp.WriteTo(b, &packet.Addr{HardwareAddr: broadcast})
	return err
}

// AskARP asks who has ip and returns every hardware address that answered within window.
func (p *Prober) AskARP(ip netip.Addr, window time.Duration) ([]string, error) {
	p.drainARP()
	if err := p.SendARP(ip); err != nil {
		return nil, err
	}
	var macs []string
	deadline := time.Now().Add(window)
	for {
		a, err := p.ReadARP(time.Until(deadline), func(a *arp.Packet) bool {
			return a.Operation == arp.OperationReply && a.SenderIP == ip && a.TargetIP == p.IP4
		})
		if err != nil {
			break
		}
		if m := a.SenderHardwareAddr.String(); !slices.Contains(macs, m) {
			macs = append(macs, m)
		}
	}
	slices.Sort(macs)
	return macs, nil
}

// ReadNA returns the first Neighbor Advertisement for target within limit with the
// given solicited flag.
func (p *Prober) ReadNA(limit time.Duration, target netip.Addr, solicited bool) (*ndp.NeighborAdvertisement, error) {
	deadline := time.Now().Add(limit)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		_ = p.ns6.SetReadDeadline(deadline)
		n, cm, _, err := p.ns6.ReadFrom(buf)
		if err != nil {
			return nil, err
		}
		if cm == nil || cm.IfIndex != p.Ifi.Index {
			continue
		}
		m, err := ndp.ParseMessage(buf[:n])
		if err != nil {
			continue
		}
		if na, ok := m.(*ndp.NeighborAdvertisement); ok && na.TargetAddress == target && na.Solicited == solicited {
			return na, nil
		}
	}
	return nil, errors.New("timed out")
}

// SendNS sends a Neighbor Solicitation for ip to its solicited-node group.
func (p *Prober) SendNS(ip netip.Addr) error {
	group, err := ndp.SolicitedNodeMulticast(ip)
	if err != nil {
		return err
	}
	b, err := ndp.MarshalMessage(&ndp.NeighborSolicitation{TargetAddress: ip, Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: p.Ifi.HardwareAddr}}})
	if err != nil {
		return err
	}
	// The interface goes by index: a zone name would be resolved through Go's
	// process-wide cache, which may hold another namespace's interfaces.
	_, err = p.ns6.WriteTo(b, &ipv6.ControlMessage{IfIndex: p.Ifi.Index, HopLimit: 255}, &net.IPAddr{IP: group.AsSlice()})
	return err
}

// AskNDP solicits ip and returns the target hardware address of every advertisement
// within window.
func (p *Prober) AskNDP(ip netip.Addr, window time.Duration) ([]string, error) {
	p.drainNDP()
	if err := p.SendNS(ip); err != nil {
		return nil, err
	}
	var macs []string
	deadline := time.Now().Add(window)
	for {
		na, err := p.ReadNA(time.Until(deadline), ip, true)
		if err != nil {
			break
		}
		if m := TargetLLA(na); m != "" && !slices.Contains(macs, m) {
			macs = append(macs, m)
		}
	}
	slices.Sort(macs)
	return macs, nil
}

// TargetLLA is the target link-layer address an advertisement carries, "" when none.
func TargetLLA(na *ndp.NeighborAdvertisement) string {
	for _, o := range na.Options {
		if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target {
			return l.Addr.String()
		}
	}
	return ""
}

// ClaimARP broadcasts a gratuitous ARP request saying that ip is at the prober's
// interface, as a node taking ip over does.
func (p *Prober) ClaimARP(ip netip.Addr) error { return p.broadcastARP(ip, ip) }

// ClaimNDP sends all nodes an unsolicited Neighbor Advertisement with the override flag
// saying that ip is at the prober's interface, as a node taking ip over does.
func (p *Prober) ClaimNDP(ip netip.Addr) error {
	b, err := ndp.MarshalMessage(&ndp.NeighborAdvertisement{Override: true, TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: p.Ifi.HardwareAddr}}})
	if err != nil {
		return err
	}
	_, err = p.ns6.WriteTo(b, &ipv6.ControlMessage{IfIndex: p.Ifi.Index, HopLimit: 255}, &net.IPAddr{IP: net.IPv6linklocalallnodes})
	return err
}
