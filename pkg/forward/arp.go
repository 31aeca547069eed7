package forward

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// arpTable is Herald's nftables table in the arp family.
const arpTable = "herald"

// nfARPIn is the arp family's input hook (NF_ARP_IN), not the inet LOCAL_IN value.
var nfARPIn = nftables.ChainHookRef(0)

// suppressARP makes the kernel ignore ARP requests for vips on every interface: the
// addresses sit on herald0, and Linux would otherwise answer for them everywhere, so that
// every forwarding node would claim every address. The speaker's own answers are
// unaffected: its packet socket sees the requests before the arp input hook.
//
// The table is replaced whole in one transaction.
func suppressARP(vips []netip.Addr) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyARP)
	if err != nil {
		return fmt.Errorf("list nftables arp tables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyARP, Name: arpTable}
	for _, have := range tables {
		if have.Name == arpTable {
			c.DelTable(t)
		}
	}
	c.AddTable(t)
	set := &nftables.Set{Table: t, Name: "vips", KeyType: nftables.TypeIPAddr}
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
	ch := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nfARPIn, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		// ARP operation (offset 6 of the ARP header) is request (1)...
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1}},
		// ...and the target protocol address (offset 24 for Ethernet and IPv4) is a VIP.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program nftables arp table %q: %w", arpTable, err)
	}
	return nil
}
