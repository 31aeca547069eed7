package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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

// Linux is the Kernel of the network namespace it was opened in. It speaks the
// kernel's IPVS generic-netlink interface itself, on one socket, many requests to a
// system call: programming thousands of real servers takes a few dozen round trips to
// the kernel rather than one each.
type Linux struct {
	ipvs   *conn
	family uint16 // the IPVS generic-netlink family's id
	route  *conn  // rtnetlink, for the addresses on herald0
}

var _ Kernel = (*Linux)(nil)

// Probe checks, without changing anything, that this kernel has what forwarding needs:
// the IPVS generic-netlink family and nftables. The error wraps ErrUnsupported.
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

// OpenLinux probes the kernel and opens the netlink sockets, in the calling thread's
// network namespace.
func OpenLinux() (*Linux, error) {
	if err := Probe(); err != nil {
		return nil, err
	}
	fam, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		return nil, fmt.Errorf("%w: IPVS generic-netlink family: %v", ErrUnsupported, err)
	}
	c, err := dial(unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("%w: open IPVS netlink: %v", ErrUnsupported, err)
	}
	r, err := dial(unix.NETLINK_ROUTE)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	return &Linux{ipvs: c, family: fam.ID, route: r}, nil
}

// Close releases the netlink sockets; the kernel state stays.
func (l *Linux) Close() {
	l.ipvs.close()
	l.route.close()
}

// Services lists every virtual service.
func (l *Linux) Services() ([]VirtualService, error) {
	var out []VirtualService
	err := l.ipvs.dump(func(seq uint32) []byte { return appendDump(nil, l.family, seq, forward.Key{}) }, func(payload []byte) error {
		v, err := parseService(payload)
		out = append(out, v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	return out, nil
}

// Destinations lists a virtual service's real servers (none for a service that does
// not exist).
func (l *Linux) Destinations(k forward.Key) ([]Destination, error) {
	af := uint16(syscall.AF_INET)
	if k.VIP.Is6() {
		af = syscall.AF_INET6
	}
	var out []Destination
	err := l.ipvs.dump(func(seq uint32) []byte { return appendDump(nil, l.family, seq, k) }, func(payload []byte) error {
		d, err := parseDest(payload, af)
		out = append(out, d)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list real servers of %s: %w", keyString(k), err)
	}
	return out, nil
}

// Apply makes the changes, in order, in as few system calls as it can. Adding what
// exists updates it instead; removing what is gone succeeds.
func (l *Linux) Apply(changes []Change) []error {
	errs := l.ipvs.do(len(changes), func(b []byte, i int, flags uint16, seq uint32) ([]byte, error) {
		return appendRequest(b, l.family, flags, seq, changes[i])
	})
	if errs == nil {
		return nil
	}
	var again []int // adds of what exists, made updates
	for i, err := range errs {
		op := changes[i].Op
		switch {
		case err == nil:
		case errors.Is(err, syscall.EEXIST) && (op == OpAddService || op == OpAddDestination):
			again = append(again, i)
		case errors.Is(err, syscall.ESRCH) && op == OpDelService, errors.Is(err, syscall.ENOENT) && op == OpDelDestination:
			errs[i] = nil
		}
	}
	if len(again) > 0 {
		updates := l.ipvs.do(len(again), func(b []byte, j int, flags uint16, seq uint32) ([]byte, error) {
			c := changes[again[j]]
			if c.Op == OpAddService {
				c.Op = OpUpdateService
			} else {
				c.Op = OpUpdateDestination
			}
			return appendRequest(b, l.family, flags, seq, c)
		})
		for j, i := range again {
			errs[i] = nil
			if updates != nil {
				errs[i] = updates[j]
			}
		}
	}
	if slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
		return errs
	}
	return nil
}

func (l *Linux) apply1(c Change) error {
	if errs := l.Apply([]Change{c}); errs != nil {
		return errs[0]
	}
	return nil
}

// AddService adds a virtual service; one that exists is updated instead.
func (l *Linux) AddService(v VirtualService) error {
	return l.apply1(Change{Op: OpAddService, Service: v})
}

// UpdateService changes a virtual service's scheduler and persistence.
func (l *Linux) UpdateService(v VirtualService) error {
	return l.apply1(Change{Op: OpUpdateService, Service: v})
}

// DelService removes a virtual service; one already gone is no error.
func (l *Linux) DelService(k forward.Key) error {
	return l.apply1(Change{Op: OpDelService, Service: VirtualService{Key: k}})
}

// AddDestination adds a real server; one that exists is updated instead.
func (l *Linux) AddDestination(k forward.Key, d Destination) error {
	return l.apply1(Change{Op: OpAddDestination, Service: VirtualService{Key: k}, Dest: d})
}

// UpdateDestination changes a real server's weight.
func (l *Linux) UpdateDestination(k forward.Key, d Destination) error {
	return l.apply1(Change{Op: OpUpdateDestination, Service: VirtualService{Key: k}, Dest: d})
}

// DelDestination removes a real server; one already gone is no error.
func (l *Linux) DelDestination(k forward.Key, d Destination) error {
	return l.apply1(Change{Op: OpDelDestination, Service: VirtualService{Key: k}, Dest: d})
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

// AddAddr puts ip on herald0 as a host address.
func (l *Linux) AddAddr(ip netip.Addr) error { return l.AddAddrs([]netip.Addr{ip}) }

// DelAddr removes ip from herald0.
func (l *Linux) DelAddr(ip netip.Addr) error { return l.DelAddrs([]netip.Addr{ip}) }

// AddAddrs puts addrs on herald0 as host addresses, many to a system call; one already
// there is no error.
func (l *Linux) AddAddrs(addrs []netip.Addr) error {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		return fmt.Errorf("find %s: %w", LinkName, err)
	}
	return l.addrs(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, link.Attrs().Index, addrs, syscall.EEXIST, "add %s to %s: %w")
}

// DelAddrs removes addrs from herald0, many to a system call; one not there is no error.
func (l *Linux) DelAddrs(addrs []netip.Addr) error {
	link, err := netlink.LinkByName(LinkName)
	if err != nil {
		return nil // no link, no address
	}
	return l.addrs(unix.RTM_DELADDR, 0, link.Attrs().Index, addrs, syscall.EADDRNOTAVAIL, "remove %s from %s: %w")
}

func (l *Linux) addrs(typ, flags uint16, index int, addrs []netip.Addr, fine syscall.Errno, format string) error {
	errs := l.route.do(len(addrs), func(b []byte, i int, f uint16, seq uint32) ([]byte, error) {
		return appendAddrRequest(b, typ, f|flags, seq, index, addrs[i]), nil
	})
	var out []error
	for i, err := range errs {
		if err != nil && !errors.Is(err, fine) {
			out = append(out, fmt.Errorf(format, addrs[i], LinkName, err))
		}
	}
	return errors.Join(out...)
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
