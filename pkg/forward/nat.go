package forward

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// inetTable is Herald's nftables table in the inet family.
const inetTable = "herald"

// masqMark marks traffic to be masqueraded on its way to a real server.
const masqMark = 0x4000

// programNAT replaces Herald's inet table: traffic to a service from outside its source
// ranges is dropped before IPVS sees it, and traffic to a masqueraded service leaves for
// the real server with this node's address as its source, so that replies come back
// through this node. One transaction.
func programNAT(services []Service) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables inet tables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: inetTable}
	for _, have := range tables {
		if have.Name == inetTable {
			c.DelTable(t)
		}
	}
	c.AddTable(t)
	// Before IPVS, which takes local traffic at input priority 98.
	sources := c.AddChain(&nftables.Chain{Name: "sources", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	mark := c.AddChain(&nftables.Chain{Name: "mark", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	masq := c.AddChain(&nftables.Chain{Name: "masquerade", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})

	for _, s := range services {
		if len(s.SourceRanges) > 0 {
			// One accept per allowed prefix (source & mask == network), then drop the rest.
			// Accepting ends only this chain: IPVS still takes the packet after it.
			for _, p := range s.SourceRanges {
				if p.Addr().Is4() != s.VIP.Is4() {
					continue
				}
				p = p.Masked()
				mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
				exprs := append(match(s, true),
					&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(mask)), Mask: mask, Xor: make([]byte, len(mask))},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()},
					&expr.Verdict{Kind: expr.VerdictAccept})
				c.AddRule(&nftables.Rule{Table: t, Chain: sources, Exprs: exprs})
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: sources, Exprs: append(match(s, false), &expr.Verdict{Kind: expr.VerdictDrop})})
		}
	}
	// Masquerade is decided per address (Services sharing one share their traffic policy),
	// so two lookups in sets serve any number of Services.
	for _, fam := range []struct {
		v4           bool
		typ          nftables.SetDatatype
		proto        byte
		offset, size uint32
	}{{true, nftables.TypeIPAddr, syscall.AF_INET, 16, 4}, {false, nftables.TypeIP6Addr, syscall.AF_INET6, 24, 16}} {
		set := &nftables.Set{Table: t, Name: "masquerade4", KeyType: fam.typ}
		if !fam.v4 {
			set.Name = "masquerade6"
		}
		var elems []nftables.SetElement
		seen := map[netip.Addr]bool{}
		for _, s := range services {
			if s.Masquerade && s.VIP.Is4() == fam.v4 && !seen[s.VIP] {
				seen[s.VIP] = true
				elems = append(elems, nftables.SetElement{Key: s.VIP.AsSlice()})
			}
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("nftables set %s: %w", set.Name, err)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: mark, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.offset, Len: fam.size},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, masqMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: masq, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, masqMark), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program nftables inet table %q: %w", inetTable, err)
	}
	return nil
}

// match returns expressions that match packets to s (family, protocol, address, port),
// leaving the source address in register 1 when withSource.
func match(s Service, withSource bool) []expr.Any {
	family, dst, src, n := byte(syscall.AF_INET), uint32(16), uint32(12), uint32(4) // IPv4 header offsets
	if s.VIP.Is6() {
		family, dst, src, n = syscall.AF_INET6, 24, 8, 16
	}
	port := binary.BigEndian.AppendUint16(nil, s.Port)
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(s.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: dst, Len: n},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: s.VIP.AsSlice()},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
	if withSource {
		exprs = append(exprs, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: src, Len: n})
	}
	return exprs
}
