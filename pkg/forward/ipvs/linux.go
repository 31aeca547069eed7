package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	lvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/transport"
)

// LinkName is the dummy link that holds the announced addresses.
const LinkName = "herald0"

// Herald's nftables tables: one in the arp family, one in the inet family.
const tableName = "herald"

// persistentFlag is IP_VS_SVC_F_PERSISTENT.
const persistentFlag = 0x1

// masqMark marks traffic to be masqueraded on its way to a real server.
const masqMark = 0x4000

// nfARPIn is the arp family's input hook (NF_ARP_IN), not the inet LOCAL_IN value.
var nfARPIn = nftables.ChainHookRef(0)

// ErrUnsupported wraps what this kernel lacks that forwarding needs.
var ErrUnsupported = errors.New("the kernel cannot forward with IPVS")

// Linux is the Kernel of the current network namespace.
type Linux struct {
	h *lvs.Handle
}

var _ Kernel = (*Linux)(nil)

// Probe checks, without changing anything, that this kernel has what forwarding needs:
// the IPVS generic-netlink family (moby/ipvs opens a handle and lists services without
// an error even where it is missing) and nftables. The error wraps ErrUnsupported.
func Probe() error {
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return fmt.Errorf("%w: no IPVS generic-netlink family (is the ip_vs module loaded?): %v", ErrUnsupported, err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("%w: nftables: %v", ErrUnsupported, err)
	}
	if _, err := c.ListTables(); err != nil {
		return fmt.Errorf("%w: nftables does not answer: %v", ErrUnsupported, err)
	}
	return nil
}

// OpenLinux probes the kernel and opens the IPVS netlink socket.
func OpenLinux() (*Linux, error) {
	if err := Probe(); err != nil {
		return nil, err
	}
	h, err := lvs.New("")
	if err != nil {
		return nil, fmt.Errorf("%w: open IPVS netlink: %v", ErrUnsupported, err)
	}
	return &Linux{h: h}, nil
}

// Close releases the netlink socket; the kernel state stays.
func (l *Linux) Close() { l.h.Close() }

func lvsService(k forward.Key) *lvs.Service {
	s := &lvs.Service{Address: net.IP(k.VIP.AsSlice()), Protocol: uint16(k.Proto), Port: k.Port,
		AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	if k.VIP.Is6() {
		s.AddressFamily, s.Netmask = syscall.AF_INET6, 128
	}
	return s
}

func lvsFull(v VirtualService) *lvs.Service {
	s := lvsService(v.Key)
	s.SchedName = v.Scheduler
	if v.Persistence > 0 {
		s.Flags, s.Timeout = persistentFlag, uint32(v.Persistence.Seconds())
	}
	return s
}

func lvsDest(d Destination) *lvs.Destination {
	out := &lvs.Destination{Address: net.IP(d.Addr.AsSlice()), Port: d.Port, Weight: max(d.Weight, 1),
		ConnectionFlags: lvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET}
	if d.Addr.Is6() {
		out.AddressFamily = syscall.AF_INET6
	}
	return out
}

// Services lists every virtual service.
func (l *Linux) Services() ([]VirtualService, error) {
	have, err := l.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	out := make([]VirtualService, 0, len(have))
	for _, s := range have {
		vip, ok := netip.AddrFromSlice(s.Address)
		v := VirtualService{Key: forward.Key{VIP: vip.Unmap(), Port: s.Port, Proto: transport.Protocol(s.Protocol)},
			Scheduler: s.SchedName, Foreign: !ok || s.FWMark != 0}
		if s.Flags&persistentFlag != 0 {
			v.Persistence = time.Duration(s.Timeout) * time.Second
		}
		out = append(out, v)
	}
	return out, nil
}

// AddService adds a virtual service; one that exists is updated instead.
func (l *Linux) AddService(v VirtualService) error {
	err := l.h.NewService(lvsFull(v))
	if errors.Is(err, syscall.EEXIST) {
		err = l.h.UpdateService(lvsFull(v))
	}
	return err
}

// UpdateService changes a virtual service's scheduler and persistence.
func (l *Linux) UpdateService(v VirtualService) error { return l.h.UpdateService(lvsFull(v)) }

// DelService removes a virtual service; one already gone is no error.
func (l *Linux) DelService(k forward.Key) error {
	if err := l.h.DelService(lvsService(k)); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// Destinations lists a virtual service's real servers.
func (l *Linux) Destinations(k forward.Key) ([]Destination, error) {
	ds, err := l.h.GetDestinations(lvsService(k))
	if err != nil {
		return nil, err
	}
	out := make([]Destination, 0, len(ds))
	for _, d := range ds {
		a, _ := netip.AddrFromSlice(d.Address)
		out = append(out, Destination{Addr: a.Unmap(), Port: d.Port, Weight: d.Weight})
	}
	return out, nil
}

// AddDestination adds a real server; one that exists is updated instead.
func (l *Linux) AddDestination(k forward.Key, d Destination) error {
	err := l.h.NewDestination(lvsService(k), lvsDest(d))
	if errors.Is(err, syscall.EEXIST) {
		err = l.h.UpdateDestination(lvsService(k), lvsDest(d))
	}
	return err
}

// UpdateDestination changes a real server's weight.
func (l *Linux) UpdateDestination(k forward.Key, d Destination) error {
	return l.h.UpdateDestination(lvsService(k), lvsDest(d))
}

// DelDestination removes a real server; one already gone is no error.
func (l *Linux) DelDestination(k forward.Key, d Destination) error {
	if err := l.h.DelDestination(lvsService(k), lvsDest(d)); err != nil && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	return nil
}

// LinkAddrs returns the addresses on herald0.
func (l *Linux) LinkAddrs() ([]netip.Addr, error) {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("find %s: %w", LinkName, err)
	}
	// A dump that the kernel interrupts (the addresses changed meanwhile, as when IPv6
	// adds the link-local address of a link just brought up) is asked again.
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 5; try++ {
		addrs, err = netlink.AddrList(link, netlink.FAMILY_ALL)
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", LinkName, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// EnsureLink creates herald0 if missing and brings it up. A kernel without the dummy
// link type gives an error wrapping ErrUnsupported.
func (l *Linux) EnsureLink() error {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: LinkName}})
		switch {
		case errors.Is(err, syscall.EOPNOTSUPP):
			return fmt.Errorf("%w: create %s: no dummy link type in this kernel: %v", ErrUnsupported, LinkName, err)
		case err != nil && !errors.Is(err, syscall.EEXIST):
			return fmt.Errorf("create %s: %w", LinkName, err)
		}
		if link, err = netlink.LinkByName(LinkName); err != nil {
			return fmt.Errorf("find %s: %w", LinkName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", LinkName, err)
	}
	return nil
}

func hostAddr(ip netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
	if ip.Is6() {
		a.Flags = syscall.IFA_F_NODAD
	}
	return a
}

// AddAddr puts ip on herald0 as a host address.
func (l *Linux) AddAddr(ip netip.Addr) error {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		return fmt.Errorf("find %s: %w", LinkName, err)
	}
	if err := netlink.AddrAdd(link, hostAddr(ip)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", ip, LinkName, err)
	}
	return nil
}

// DelAddr removes ip from herald0.
func (l *Linux) DelAddr(ip netip.Addr) error {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		return nil // no link, no address
	}
	if err := netlink.AddrDel(link, hostAddr(ip)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", ip, LinkName, err)
	}
	return nil
}

// HasTables reports whether either of Herald's nftables tables exists.
func (l *Linux) HasTables() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if ours(t) {
			return true, nil
		}
	}
	return false, nil
}

func ours(t *nftables.Table) bool {
	return t.Name == tableName && (t.Family == nftables.TableFamilyARP || t.Family == nftables.TableFamilyINet)
}

// DelTables removes Herald's nftables tables.
func (l *Linux) DelTables() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := deleteOurs(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables tables %q: %w", tableName, err)
	}
	return nil
}

func deleteOurs(c *nftables.Conn) error {
	tables, err := c.ListTables()
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if ours(t) {
			c.DelTable(t)
		}
	}
	return nil
}

// SetTables replaces Herald's tables in one transaction:
//
//   - arp herald: drop ARP requests for t.Silence before the kernel answers them. The
//     speaker's own answers are unaffected: its packet socket sees the requests first.
//   - inet herald: traffic to a virtual service from outside its source ranges is dropped
//     before IPVS sees it (input, filter priority; IPVS takes local traffic at 98),
//     traffic to a virtual service in t.Reject is refused next (input, just after the
//     source ranges: a source they drop is not answered), and traffic to t.Masquerade is
//     marked in prerouting and masqueraded in postrouting.
func (l *Linux) SetTables(t Tables) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := deleteOurs(c); err != nil {
		return err
	}
	if err := silenceARP(c, t.Silence); err != nil {
		return err
	}
	if err := filterAndMasquerade(c, t); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program nftables tables %q: %w", tableName, err)
	}
	return nil
}

func silenceARP(c *nftables.Conn, vips []netip.Addr) error {
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyARP, Name: tableName})
	set := &nftables.Set{Table: tb, Name: "vips", KeyType: nftables.TypeIPAddr}
	var elems []nftables.SetElement
	for _, v := range vips {
		if v.Is4() {
			b := v.As4()
			elems = append(elems, nftables.SetElement{Key: b[:]})
		}
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("nftables set of addresses: %w", err)
	}
	ch := c.AddChain(&nftables.Chain{Name: "input", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nfARPIn, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		// ARP operation (offset 6 of the ARP header) is request (1)...
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1}},
		// ...and the target protocol address (offset 24 for Ethernet and IPv4) is a VIP.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	return nil
}

func filterAndMasquerade(c *nftables.Conn, t Tables) error {
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tableName})
	sources := c.AddChain(&nftables.Chain{Name: "sources", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	mark := c.AddChain(&nftables.Chain{Name: "mark", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	masq := c.AddChain(&nftables.Chain{Name: "masquerade", Table: tb, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	// A chain of its own: an accept in sources ends only that chain.
	refuse := c.AddChain(&nftables.Chain{Name: "refuse", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityFilter + 1)})
	for _, k := range t.Reject {
		// TCP gets a reset; UDP and SCTP an ICMP (ICMPv6) port unreachable.
		reject := &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}
		if k.Proto == transport.TCP {
			reject = &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}
		}
		c.AddRule(&nftables.Rule{Table: tb, Chain: refuse, Exprs: append(match(k, false), reject)})
	}
	for _, r := range t.Sources {
		// One accept per allowed prefix (source & mask == network), then drop the rest.
		// Accepting ends only this chain: IPVS still takes the packet after it.
		for _, p := range r.Allowed {
			mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
			exprs := append(match(r.Key, true),
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(mask)), Mask: mask, Xor: make([]byte, len(mask))},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()},
				&expr.Verdict{Kind: expr.VerdictAccept})
			c.AddRule(&nftables.Rule{Table: tb, Chain: sources, Exprs: exprs})
		}
		c.AddRule(&nftables.Rule{Table: tb, Chain: sources, Exprs: append(match(r.Key, false), &expr.Verdict{Kind: expr.VerdictDrop})})
	}
	// Masquerade is decided per address, so two lookups in sets serve any number of
	// Services.
	for _, fam := range []struct {
		v4           bool
		name         string
		typ          nftables.SetDatatype
		proto        byte
		offset, size uint32
	}{{true, "masquerade4", nftables.TypeIPAddr, syscall.AF_INET, 16, 4}, {false, "masquerade6", nftables.TypeIP6Addr, syscall.AF_INET6, 24, 16}} {
		set := &nftables.Set{Table: tb, Name: fam.name, KeyType: fam.typ}
		var elems []nftables.SetElement
		for _, a := range t.Masquerade {
			if a.Is4() == fam.v4 {
				elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("nftables set %s: %w", set.Name, err)
		}
		c.AddRule(&nftables.Rule{Table: tb, Chain: mark, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.offset, Len: fam.size},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, masqMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}})
	}
	c.AddRule(&nftables.Rule{Table: tb, Chain: masq, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, masqMark), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{},
	}})
	return nil
}

// match returns expressions that match packets to k (family, protocol, address, port),
// leaving the source address in register 1 when withSource.
func match(k forward.Key, withSource bool) []expr.Any {
	family, dst, src, n := byte(syscall.AF_INET), uint32(16), uint32(12), uint32(4) // IPv4 header offsets
	if k.VIP.Is6() {
		family, dst, src, n = syscall.AF_INET6, 24, 8, 16
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(k.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: dst, Len: n},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: k.VIP.AsSlice()},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, k.Port)},
	}
	if withSource {
		exprs = append(exprs, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: src, Len: n})
	}
	return exprs
}

// Sysctls sets to 1 what IPVS in NAT mode needs (see the package function).
func (l *Linux) Sysctls() error { return Sysctls() }

// Sysctls sets to 1 what IPVS in NAT mode needs: forwarding, and conntrack for IPVS
// connections (so replies can be matched and masqueraded). A value already right is not
// written, so a speaker whose /proc/sys is read-only works where the host set them. It
// needs no handle, for the speaker's init container.
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
