package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/transport"
)

// The kernel's IPVS generic-netlink interface (include/uapi/linux/ip_vs.h): commands,
// and the attributes of a service and of a destination.
const (
	genlVersion = 1

	cmdNewService = 1
	cmdSetService = 2
	cmdDelService = 3
	cmdGetService = 4
	cmdNewDest    = 5
	cmdSetDest    = 6
	cmdDelDest    = 7
	cmdGetDest    = 8

	attrService = 1 // IPVS_CMD_ATTR_SERVICE, nested
	attrDest    = 2 // IPVS_CMD_ATTR_DEST, nested

	svcAF        = 1 // u16
	svcProtocol  = 2 // u16
	svcAddr      = 3 // 4 or 16 bytes
	svcPort      = 4 // be16
	svcFWMark    = 5 // u32
	svcSchedName = 6 // NUL-terminated
	svcFlags     = 7 // struct ip_vs_flags {flags, mask u32}
	svcTimeout   = 8 // u32, seconds
	svcNetmask   = 9 // u32

	destAddr      = 1  // 4 or 16 bytes
	destPort      = 2  // be16
	destFwdMethod = 3  // u32
	destWeight    = 4  // u32
	destUThresh   = 5  // u32
	destLThresh   = 6  // u32
	destAF        = 11 // u16, in dumps

	fwdMasq = 0 // IP_VS_CONN_F_MASQ
)

const (
	nlmsgHdrLen = 16 // struct nlmsghdr
	genlHdrLen  = 4  // struct genlmsghdr
	attrHdrLen  = 4  // struct nlattr
)

// Op is the kind of one change to IPVS.
type Op uint8

// The changes Apply makes.
const (
	OpAddService Op = iota + 1
	OpUpdateService
	OpDelService
	OpAddDestination
	OpUpdateDestination
	OpDelDestination
)

func (o Op) String() string {
	switch o {
	case OpAddService:
		return "add service"
	case OpUpdateService:
		return "update service"
	case OpDelService:
		return "remove service"
	case OpAddDestination:
		return "add real server"
	case OpUpdateDestination:
		return "update real server"
	case OpDelDestination:
		return "remove real server"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Change is one write to IPVS. A destination change and OpDelService use only
// Service.Key; Dest is used by destination changes alone.
type Change struct {
	Op      Op
	Service VirtualService
	Dest    Destination
}

func (c Change) String() string {
	if c.Op >= OpAddDestination && c.Op <= OpDelDestination {
		return fmt.Sprintf("%s %s of %s", c.Op, netip.AddrPortFrom(c.Dest.Addr, c.Dest.Port), keyString(c.Service.Key))
	}
	return fmt.Sprintf("%s %s", c.Op, keyString(c.Service.Key))
}

// command returns the IPVS command that makes c.
func (c Change) command() (uint8, error) {
	var cmd uint8
	switch c.Op {
	case OpAddService:
		cmd = cmdNewService
	case OpUpdateService:
		cmd = cmdSetService
	case OpDelService:
		cmd = cmdDelService
	case OpAddDestination:
		cmd = cmdNewDest
	case OpUpdateDestination:
		cmd = cmdSetDest
	case OpDelDestination:
		cmd = cmdDelDest
	default:
		return 0, fmt.Errorf("unknown IPVS change %d", uint8(c.Op))
	}
	if !c.Service.Key.VIP.IsValid() {
		return 0, errors.New("no virtual service address")
	}
	if c.Op >= OpAddDestination && (!c.Dest.Addr.IsValid() || c.Dest.Addr.Is4() != c.Service.Key.VIP.Is4()) {
		return 0, fmt.Errorf("real server %s is not of the family of %s", c.Dest.Addr, c.Service.Key.VIP)
	}
	return cmd, nil
}

// appendRequest appends the netlink request that makes c: a netlink header (family,
// flags, seq), a generic-netlink header, the service (its key alone unless it is added
// or updated) and, for a destination change, the destination.
func appendRequest(b []byte, family, flags uint16, seq uint32, c Change) ([]byte, error) {
	cmd, err := c.command()
	if err != nil {
		return b, fmt.Errorf("%s: %w", c, err)
	}
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set below
	b = binary.NativeEndian.AppendUint16(b, family)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel fills it in
	b = append(b, cmd, genlVersion, 0, 0)
	b = appendService(b, c.Service, c.Op == OpAddService || c.Op == OpUpdateService)
	if c.Op >= OpAddDestination {
		b = appendDest(b, c.Dest, c.Op != OpDelDestination)
	}
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b, nil
}

// appendDump appends a dump request: of every service (key invalid), or of the
// destinations of the service k.
func appendDump(b []byte, family uint16, seq uint32, k forward.Key) []byte {
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = binary.NativeEndian.AppendUint16(b, family)
	b = binary.NativeEndian.AppendUint16(b, syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	if k.VIP.IsValid() {
		b = append(b, cmdGetDest, genlVersion, 0, 0)
		b = appendService(b, VirtualService{Key: k}, false)
	} else {
		b = append(b, cmdGetService, genlVersion, 0, 0)
	}
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

func appendService(b []byte, v VirtualService, full bool) []byte {
	nest := len(b)
	b = appendAttr(b, attrService, 0)
	af := uint16(syscall.AF_INET)
	if v.Key.VIP.Is6() {
		af = syscall.AF_INET6
	}
	b = appendU16(b, svcAF, af)
	b = appendU16(b, svcProtocol, uint16(v.Key.Proto))
	b = appendAddr(b, svcAddr, v.Key.VIP)
	b = appendPort(b, svcPort, v.Key.Port)
	if full {
		b = appendString(b, svcSchedName, v.Scheduler)
		var flags, timeout uint32
		if v.Persistence > 0 {
			flags, timeout = persistentFlag, uint32(v.Persistence/time.Second)
		}
		b = appendAttr(b, svcFlags, 8)
		b = binary.NativeEndian.AppendUint32(binary.NativeEndian.AppendUint32(b, flags), 0xffffffff)
		b = appendU32(b, svcTimeout, timeout)
		mask := uint32(0xffffffff)
		if v.Key.VIP.Is6() {
			mask = 128 // a prefix length for IPv6
		}
		b = appendU32(b, svcNetmask, mask)
	}
	return endNest(b, nest)
}

func appendDest(b []byte, d Destination, full bool) []byte {
	nest := len(b)
	b = appendAttr(b, attrDest, 0)
	b = appendAddr(b, destAddr, d.Addr)
	b = appendPort(b, destPort, d.Port)
	if full {
		b = appendU32(b, destFwdMethod, fwdMasq)
		b = appendU32(b, destWeight, uint32(max(d.Weight, 1)))
		b = appendU32(b, destUThresh, 0)
		b = appendU32(b, destLThresh, 0)
	}
	return endNest(b, nest)
}

// appendAttr appends the header of an attribute whose value of n bytes the caller
// appends next; a nested attribute's length is set by endNest.
func appendAttr(b []byte, typ uint16, n int) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(attrHdrLen+n))
	return binary.NativeEndian.AppendUint16(b, typ)
}

func appendU16(b []byte, typ, v uint16) []byte {
	return append(binary.NativeEndian.AppendUint16(appendAttr(b, typ, 2), v), 0, 0)
}

func appendU32(b []byte, typ uint16, v uint32) []byte {
	return binary.NativeEndian.AppendUint32(appendAttr(b, typ, 4), v)
}

// appendPort appends a port in network byte order.
func appendPort(b []byte, typ, port uint16) []byte {
	return append(binary.BigEndian.AppendUint16(appendAttr(b, typ, 2), port), 0, 0)
}

// appendAddr appends an address's 4 or 16 bytes.
func appendAddr(b []byte, typ uint16, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(appendAttr(b, typ, 4), v[:]...)
	}
	v := a.As16()
	return append(appendAttr(b, typ, 16), v[:]...)
}

// appendString appends s with its terminating NUL, padded to 4 bytes.
func appendString(b []byte, typ uint16, s string) []byte {
	b = append(append(appendAttr(b, typ, len(s)+1), s...), 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// endNest sets the length of the nested attribute that starts at nest to cover what
// follows it.
func endNest(b []byte, nest int) []byte {
	binary.NativeEndian.PutUint16(b[nest:], uint16(len(b)-nest))
	return b
}

// attrs walks the attributes in b, calling fn for each with its type (the nested and
// byte-order flags cleared) and value. It fails on an attribute that overruns b.
func attrs(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) >= attrHdrLen {
		n := int(binary.NativeEndian.Uint16(b))
		if n < attrHdrLen || n > len(b) {
			return fmt.Errorf("netlink attribute of length %d in %d bytes", n, len(b))
		}
		if err := fn(binary.NativeEndian.Uint16(b[2:])&0x3fff, b[attrHdrLen:n]); err != nil {
			return err
		}
		b = b[min(align4(n), len(b)):]
	}
	return nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// nested returns the value of the attribute typ among the attributes of a generic
// netlink message's payload (after its generic-netlink header).
func nested(payload []byte, typ uint16) ([]byte, error) {
	if len(payload) < genlHdrLen {
		return nil, fmt.Errorf("generic netlink message of %d bytes", len(payload))
	}
	var out []byte
	err := attrs(payload[genlHdrLen:], func(t uint16, v []byte) error {
		if t == typ {
			out = v
		}
		return nil
	})
	if err == nil && out == nil {
		err = fmt.Errorf("no attribute %d in the IPVS message", typ)
	}
	return out, err
}

// parseService reads a virtual service from the payload of an IPVS message.
func parseService(payload []byte) (VirtualService, error) {
	b, err := nested(payload, attrService)
	if err != nil {
		return VirtualService{}, err
	}
	var (
		v            VirtualService
		af           uint16
		addr         []byte
		flags, tmout uint32
		fwmark       bool
	)
	err = attrs(b, func(t uint16, val []byte) error {
		switch t {
		case svcAF, svcProtocol:
			if len(val) < 2 {
				return fmt.Errorf("IPVS service attribute %d of %d bytes", t, len(val))
			}
			if t == svcAF {
				af = binary.NativeEndian.Uint16(val)
			} else {
				v.Key.Proto = transport.Protocol(binary.NativeEndian.Uint16(val))
			}
		case svcAddr:
			addr = val
		case svcPort:
			if len(val) < 2 {
				return fmt.Errorf("IPVS service port of %d bytes", len(val))
			}
			v.Key.Port = binary.BigEndian.Uint16(val)
		case svcFWMark:
			fwmark = len(val) >= 4 && binary.NativeEndian.Uint32(val) != 0
		case svcSchedName:
			v.Scheduler = cString(val)
		case svcFlags:
			if len(val) < 4 {
				return fmt.Errorf("IPVS service flags of %d bytes", len(val))
			}
			flags = binary.NativeEndian.Uint32(val)
		case svcTimeout:
			if len(val) < 4 {
				return fmt.Errorf("IPVS service timeout of %d bytes", len(val))
			}
			tmout = binary.NativeEndian.Uint32(val)
		}
		return nil
	})
	if err != nil {
		return VirtualService{}, err
	}
	v.Key.VIP, err = parseAddr(af, addr)
	if fwmark || err != nil {
		// A firewall-mark service has no address; one of a family Herald does not know
		// is not Herald's either.
		v.Foreign, v.Key.VIP = true, netip.Addr{}
	}
	if flags&persistentFlag != 0 {
		v.Persistence = time.Duration(tmout) * time.Second
	}
	return v, nil
}

// parseDest reads a destination from the payload of an IPVS message; af is the
// family of its service, for kernels that do not say the destination's.
func parseDest(payload []byte, af uint16) (Destination, error) {
	b, err := nested(payload, attrDest)
	if err != nil {
		return Destination{}, err
	}
	var (
		d    Destination
		addr []byte
	)
	err = attrs(b, func(t uint16, val []byte) error {
		switch t {
		case destAddr:
			addr = val
		case destPort:
			if len(val) < 2 {
				return fmt.Errorf("IPVS real server port of %d bytes", len(val))
			}
			d.Port = binary.BigEndian.Uint16(val)
		case destWeight:
			if len(val) < 4 {
				return fmt.Errorf("IPVS real server weight of %d bytes", len(val))
			}
			d.Weight = int(int32(binary.NativeEndian.Uint32(val)))
		case destAF:
			if len(val) < 2 {
				return fmt.Errorf("IPVS real server family of %d bytes", len(val))
			}
			af = binary.NativeEndian.Uint16(val)
		}
		return nil
	})
	if err != nil {
		return Destination{}, err
	}
	if d.Addr, err = parseAddr(af, addr); err != nil {
		return Destination{}, fmt.Errorf("IPVS real server: %w", err)
	}
	return d, nil
}

// parseAddr reads an address of family af from the kernel's union nf_inet_addr (16
// bytes, an IPv4 address in the first 4) or from just the address's bytes.
func parseAddr(af uint16, b []byte) (netip.Addr, error) {
	switch {
	case af == syscall.AF_INET && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case af == syscall.AF_INET6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16])), nil
	}
	return netip.Addr{}, fmt.Errorf("address of family %d in %d bytes", af, len(b))
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// appendAddrRequest appends an rtnetlink request (RTM_NEWADDR or RTM_DELADDR) for the
// host address a on the link of index: ifaddrmsg, then IFA_LOCAL and IFA_ADDRESS. An
// IPv6 address skips duplicate address detection.
func appendAddrRequest(b []byte, typ, flags uint16, seq uint32, index int, a netip.Addr) []byte {
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	family, ifaFlags := byte(syscall.AF_INET), byte(0)
	if a.Is6() {
		family, ifaFlags = syscall.AF_INET6, syscall.IFA_F_NODAD
	}
	b = append(b, family, byte(a.BitLen()), ifaFlags, 0) // scope: universe
	b = binary.NativeEndian.AppendUint32(b, uint32(index))
	b = appendAddr(b, syscall.IFA_LOCAL, a)
	b = appendAddr(b, syscall.IFA_ADDRESS, a)
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}
