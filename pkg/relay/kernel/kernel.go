package kernel

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/heraldlb/herald/pkg/relay"
)

// TableName is the nftables table (family inet) the relay owns.
const TableName = "herald-relay"

// Defaults of Options.
const (
	DefaultPriority   = 31000      // before the main table's rule (32766)
	DefaultFirstTable = 0x48524c00 // "HRL\0": far from the numbers people pick by hand
	DefaultTables     = 1024
	DefaultMaxRules   = 1024
)

// Options configure a Relay.
type Options struct {
	// Priority is the policy rules' priority; default DefaultPriority. Rules at it that
	// point into the relay's tables are the relay's.
	Priority int
	// FirstTable and Tables are the routing tables the relay may use, one per node it
	// relays to; defaults DefaultFirstTable and DefaultTables.
	FirstTable, Tables int
	// MaxRules bounds the policy rules (every routed packet of the node walks them
	// before the main table); default DefaultMaxRules. Routes beyond it are not
	// installed and Set says so.
	MaxRules int
	// Netlink is the handle to program with; default the calling thread's namespace.
	Netlink *netlink.Handle
	// NFT makes the nftables connection; default nftables.New.
	NFT func() (*nftables.Conn, error)
}

// Relay programs the kernel; it is not safe for concurrent use.
type Relay struct {
	opts Options
	nl   *netlink.Handle
	// nft is the nftables content last written; check asks the next Set to see that the
	// table is still there.
	nft   string
	check bool
	// clean: the last Set was empty and left nothing in the kernel, so another empty one
	// need not read it (a node that relays nothing costs nothing per plan).
	clean bool
	seen  watched
}

// New checks that the kernel can relay (policy rules with ports, nftables) and returns a
// Relay that has changed nothing yet.
func New(opts Options) (*Relay, error) {
	opts.Priority = cmp.Or(opts.Priority, DefaultPriority)
	opts.FirstTable = cmp.Or(opts.FirstTable, DefaultFirstTable)
	opts.Tables = cmp.Or(opts.Tables, DefaultTables)
	opts.MaxRules = cmp.Or(opts.MaxRules, DefaultMaxRules)
	if opts.Priority < 2 || opts.Priority > 32764 {
		return nil, fmt.Errorf("rule priority %d: must be from 2 to 32764 (the relay uses the priorities on either side, and 0, 32766 and 32767 are the kernel's)", opts.Priority)
	}
	if opts.NFT == nil {
		opts.NFT = func() (*nftables.Conn, error) { return nftables.New(nftables.WithSockOptions(bigSendBuffer)) }
	}
	r := &Relay{opts: opts, nl: opts.Netlink, nft: "unknown"}
	if r.nl == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		r.nl = h
	}
	if _, err := r.nl.RuleList(netlink.FAMILY_V4); err != nil {
		return nil, fmt.Errorf("list policy rules (the kernel needs CONFIG_IP_MULTIPLE_TABLES): %w", err)
	}
	c, err := opts.NFT()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if err := probeSets(opts.NFT); err != nil {
		return nil, err
	}
	return r, nil
}

// probeSets checks that the kernel has the sets the relay needs: concatenated keys with
// ranges (Linux 5.6 and later), by making one in a table of its own and removing it.
func probeSets(conn func() (*nftables.Conn, error)) error {
	c, err := conn()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName + "-probe"})
	set := &nftables.Set{Table: tb, Name: "flows", Concatenation: true, Interval: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)}
	if err := c.AddSet(set, nil); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	err = c.Flush()
	c.DelTable(tb)
	if derr := c.Flush(); err == nil && derr != nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("nftables sets of concatenated ranges (Linux 5.6 and later): %w", err)
	}
	return nil
}

// Resync has the next Set check that its nftables table is still there, and write it
// again if not (the rules and routing tables are read from the kernel on every Set). An
// unchanged table is not rewritten, so its counters keep counting.
func (r *Relay) Resync() { r.check = true }

// rule is one policy rule as the relay writes it.
type rule struct {
	vip      netip.Addr
	proto    int
	port     uint16
	from, to uint16
	table    int
}

// Set makes the kernel relay exactly routes (relay.Sort order), and nothing when empty.
// A route that cannot be installed whole (forwarding off for its family, an address local
// to this node, its node's table refused, a bound reached) is left out everywhere, its
// flows kept by this node; the others are installed, and the error is a *relay.Partial
// that says which were left out. Any other error (the kernel refusing what it should
// take) is a failure to try again.
func (r *Relay) Set(routes []relay.Route) error {
	if len(routes) == 0 && r.clean && !r.check {
		return nil
	}
	r.clean = false
	asked := routes
	var errs, left []error // failures; routes left out
	for _, fam := range []struct {
		v4   bool
		path string
	}{{true, "/proc/sys/net/ipv4/ip_forward"}, {false, "/proc/sys/net/ipv6/conf/all/forwarding"}} {
		if !slices.ContainsFunc(routes, func(rt relay.Route) bool { return rt.VIP.Is4() == fam.v4 }) {
			continue
		}
		if err := needForwarding(fam.path); err != nil {
			left = append(left, err)
			routes = slices.DeleteFunc(slices.Clone(routes), func(rt relay.Route) bool { return rt.VIP.Is4() == fam.v4 })
		}
	}
	list, err := r.listRules()
	if err != nil {
		return errors.Join(append(left, err)...)
	}
	haveRules := r.rules(list)
	haveTables, err := r.tables()
	if err != nil {
		return errors.Join(append(left, err)...)
	}
	routes, refused, err := r.notLocal(routes)
	if err != nil {
		return errors.Join(append(left, err)...)
	}
	if len(refused) > 0 {
		left = append(left, fmt.Errorf("not relaying %s: a local address of this node (kube-proxy in IPVS mode binds Service addresses to kube-ipvs0); relay-local needs kube-proxy in iptables or nftables mode", strings.Join(refused, ", ")))
	}
	if len(routes) > r.opts.MaxRules {
		left = append(left, fmt.Errorf("%d relayed source-port ranges, more than the %d policy rules allowed: the first %d are relayed", len(routes), r.opts.MaxRules, r.opts.MaxRules))
		routes = routes[:r.opts.MaxRules]
	}

	// A table per node relayed to: the one already routing via its address, else a free one.
	tableOf := map[netip.Addr]int{}
	for t, gw := range haveTables {
		if _, dup := tableOf[gw]; !dup || t < tableOf[gw] {
			tableOf[gw] = t
		}
	}
	// A table that rules still point to is not free, even when its route is gone: those
	// rules go only after the new state is in.
	pointed := map[int]bool{}
	for k := range haveRules {
		pointed[k.table] = true
	}
	want := map[int]netip.Addr{}
	next := r.opts.FirstTable
	for _, rt := range routes {
		if _, ok := tableOf[rt.Via]; ok {
			want[tableOf[rt.Via]] = rt.Via
			continue
		}
		for ; next < r.opts.FirstTable+r.opts.Tables; next++ {
			_, used := haveTables[next]
			if _, taken := want[next]; !used && !taken && !pointed[next] {
				break
			}
		}
		if next >= r.opts.FirstTable+r.opts.Tables {
			left = append(left, fmt.Errorf("relay to %s (%s): all %d routing tables from %d are in use", rt.Node, rt.Via, r.opts.Tables, r.opts.FirstTable))
			continue
		}
		tableOf[rt.Via], want[next] = next, rt.Via
	}

	// Routes, then rules: a rule never points at an empty table, nor a flow is left
	// untracked without its rule.
	routed := map[int]bool{}
	for t, gw := range want {
		if have, ok := haveTables[t]; ok && have == gw {
			routed[t] = true
			continue
		}
		if err := r.nl.RouteReplace(defaultRoute(t, gw)); err != nil {
			err = fmt.Errorf("routing table %d: default via %s: %w", t, gw, err)
			if unreachable(err) {
				// No link reaches the node (not on a connected subnet): left out until
				// the route watch sees one that does.
				left = append(left, err)
			} else {
				errs = append(errs, err)
			}
			continue
		}
		routed[t] = true
	}
	// Only packets that came in on a link the flows go back out of are relayed: not a
	// pod's own packets to the address (their replies would come back through this node,
	// where conntrack never saw the flow).
	links, err := r.uplinks(want, routed)
	if err != nil {
		errs = append(errs, err)
	}
	wantRules := map[rule]bool{}
	var installed []relay.Route
	for _, rt := range routes {
		t, ok := tableOf[rt.Via]
		if !ok || !routed[t] {
			continue
		}
		k := rule{vip: rt.VIP, proto: int(rt.Proto), port: rt.Port, from: rt.From, to: rt.To, table: t}
		if _, ok := haveRules[k]; !ok {
			if err := r.nl.RuleAdd(r.netlinkRule(k)); err != nil && !errors.Is(err, syscall.EEXIST) {
				errs = append(errs, fmt.Errorf("policy rule to %s %s port %d source ports %d-%d via %s: %w", rt.VIP, rt.Proto, rt.Port, rt.From, rt.To, rt.Via, err))
				continue
			}
		}
		wantRules[k] = true
		installed = append(installed, rt)
	}

	// The gates: traffic that did not come in on the one link relayed flows arrive on,
	// or is not for a relayed address, skips every relay rule (a rule costs every routed
	// packet a few nanoseconds). Removing a gate is always safe (more packets walk the
	// rules); adding one only once nftables untracks what it lets through. Two gates on
	// different links at once would let nothing through.
	haveGates := r.gates(list)
	wantGates := r.wantGates(installed, links)
	slices.SortFunc(haveGates, func(a, b gate) int { return cmp.Compare(a.rule.Priority, b.rule.Priority) })
	for _, g := range haveGates { // gates before their landing
		if !slices.ContainsFunc(wantGates, g.same) {
			if err := r.nl.RuleDel(g.rule); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("delete policy rule %s: %w", g.rule, err))
			}
		}
	}

	// nftables in one transaction: the untracked flows, and the redirects dropped.
	if err := r.setTable(installed, links); err != nil {
		// The table in the kernel is still the previous one, whole: so are the rules and
		// routes its untracked flows need, until a Set succeeds.
		return errors.Join(append(append(errs, left...), err)...)
	}
	for _, g := range wantGates { // the landing first
		if !slices.ContainsFunc(haveGates, g.same) {
			if err := r.nl.RuleAdd(g.rule); err != nil && !errors.Is(err, syscall.EEXIST) {
				errs = append(errs, fmt.Errorf("policy rule %s: %w", g.rule, err))
			}
		}
	}

	// Then what is no longer wanted.
	for k, nr := range haveRules {
		if !wantRules[k] {
			if err := r.nl.RuleDel(nr); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("delete policy rule to %s port %d: %w", k.vip, k.port, err))
			}
		}
	}
	for t, gw := range haveTables {
		if _, ok := want[t]; !ok {
			if err := r.nl.RouteDel(defaultRoute(t, gw)); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("routing table %d: delete default via %s: %w", t, gw, err))
			}
		}
	}
	r.clean = len(routes) == 0 && len(errs) == 0 && len(left) == 0
	r.remember(asked, links)
	if len(errs) > 0 {
		return errors.Join(append(errs, left...)...)
	}
	if len(left) > 0 {
		return &relay.Partial{Left: len(asked) - len(installed), Err: errors.Join(left...)}
	}
	return nil
}

// unreachable says whether the kernel refused a route because no link reaches its
// gateway, the link is down, a prohibit route covers it, or it is invalid: a state of
// the node's links, not a failure to retry.
func unreachable(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EACCES, syscall.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dump is a kernel listing, made again (a few times) when the kernel interrupted it
// because the table changed meanwhile, as on a node whose pods come and go.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range 3 {
		if out, err = list(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return out, err
}

// remember records what Watch compares changes with: every node and address asked
// for, installed or left out (so that the link or address that lets a left-out route
// in wakes the relay too), and the links relayed through.
func (r *Relay) remember(asked []relay.Route, links []int) {
	var gws, vips []netip.Addr
	for _, rt := range asked {
		gws = append(gws, rt.Via)
		vips = append(vips, rt.VIP)
	}
	names := map[int]string{}
	for _, l := range links {
		if link, err := r.nl.LinkByIndex(l); err == nil {
			names[l] = link.Attrs().Name
		}
	}
	slices.SortFunc(gws, netip.Addr.Compare)
	slices.SortFunc(vips, netip.Addr.Compare)
	r.seen.set(slices.Compact(gws), slices.Compact(vips), names)
}

// notLocal leaves out the routes of addresses that are local to this node, and names
// those addresses: the local table comes before any policy rule, so they could not be
// relayed (kube-proxy in IPVS mode binds every Service address to kube-ipvs0).
func (r *Relay) notLocal(routes []relay.Route) ([]relay.Route, []string, error) {
	if len(routes) == 0 {
		return routes, nil, nil
	}
	var local []netip.Prefix // addresses, and whole prefixes routed as local (AnyIP)
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := dump(func() ([]netlink.Route, error) {
			return r.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
		})
		if err != nil {
			return nil, nil, fmt.Errorf("list local addresses: %w", err)
		}
		for _, rt := range list {
			if rt.Dst == nil {
				continue
			}
			a, ok := netip.AddrFromSlice(rt.Dst.IP)
			ones, _ := rt.Dst.Mask.Size()
			if p, err := a.Unmap().Prefix(ones); ok && err == nil {
				local = append(local, p)
			}
		}
	}
	isLocal := func(a netip.Addr) bool {
		return slices.ContainsFunc(local, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	var refused []string
	out := routes[:0:0]
	for _, rt := range routes {
		if isLocal(rt.VIP) {
			if len(refused) == 0 || refused[len(refused)-1] != rt.VIP.String() {
				refused = append(refused, rt.VIP.String())
			}
			continue
		}
		out = append(out, rt)
	}
	return out, refused, nil
}

// uplinks returns the interfaces the routed tables send through.
func (r *Relay) uplinks(want map[int]netip.Addr, routed map[int]bool) ([]int, error) {
	set := map[int]bool{}
	var errs []error
	for t, gw := range want {
		if !routed[t] {
			continue
		}
		rts, err := r.nl.RouteGet(gw.AsSlice())
		if err != nil || len(rts) == 0 {
			errs = append(errs, fmt.Errorf("the link towards %s: %v", gw, err))
			continue
		}
		set[rts[0].LinkIndex] = true
	}
	return slices.Sorted(maps.Keys(set)), errors.Join(errs...)
}

// gate is one of the rules that let other traffic skip the relay's: at Priority-1, "not
// iif LINK goto Priority+1", and its landing at Priority+1, a rule that does nothing.
type gate struct{ rule *netlink.Rule }

func (g gate) same(o gate) bool {
	a, b := g.rule, o.rule
	return a.Family == b.Family && a.Priority == b.Priority && a.Goto == b.Goto && a.IifName == b.IifName &&
		a.Invert == b.Invert && a.Type == b.Type && a.Dst.String() == b.Dst.String()
}

// gates returns the gate and landing rules among the kernel's.
func (r *Relay) gates(list []netlink.Rule) []gate {
	var out []gate
	for i := range list {
		nr := &list[i]
		switch {
		case nr.Priority == r.opts.Priority-1 && nr.Goto == r.opts.Priority+1:
			nr.Type = 0
		case nr.Priority == r.opts.Priority+1 && nr.Table == 0 && nr.Goto < 0:
			// A rule without a table or a goto: the landing (netlink does not read a
			// rule's action back).
			nr.Type, nr.Goto = nl.FR_ACT_NOP, -1
		default:
			continue
		}
		out = append(out, gate{nr})
	}
	return out
}

// listRules returns the kernel's policy rules of both families, each with its family.
func (r *Relay) listRules() ([]netlink.Rule, error) {
	var out []netlink.Rule
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := dump(func() ([]netlink.Rule, error) { return r.nl.RuleList(fam) })
		if err != nil {
			return nil, fmt.Errorf("list policy rules: %w", err)
		}
		for i := range list {
			list[i].Family = fam
		}
		out = append(out, list...)
	}
	return out, nil
}

// wantGates returns the gates for the families relayed, landing first: one lets through
// only what came in on the link relayed flows arrive on (none when they come in on more
// than one: a rule names one link), one only what goes to the smallest prefix holding
// every relayed address (none when that is everything). So traffic to pods and to the
// node itself walks two rules, not the relay's.
func (r *Relay) wantGates(installed []relay.Route, links []int) []gate {
	if len(links) != 1 {
		return nil
	}
	link, err := r.nl.LinkByIndex(links[0])
	if err != nil {
		return nil
	}
	var out []gate
	for _, fam := range []struct {
		v4     bool
		family int
	}{{true, netlink.FAMILY_V4}, {false, netlink.FAMILY_V6}} {
		if !slices.ContainsFunc(installed, func(rt relay.Route) bool { return rt.VIP.Is4() == fam.v4 }) {
			continue
		}
		land := netlink.NewRule()
		land.Family, land.Priority, land.Type, land.Table = fam.family, r.opts.Priority+1, nl.FR_ACT_NOP, -1
		g := netlink.NewRule()
		g.Family, g.Priority, g.Goto, g.IifName, g.Invert, g.Table = fam.family, r.opts.Priority-1, r.opts.Priority+1, link.Attrs().Name, true, -1
		out = append(out, gate{land}, gate{g})
		if p := cover(installed, fam.v4); p.Bits() > 0 {
			d := netlink.NewRule()
			d.Family, d.Priority, d.Goto, d.Invert, d.Table = fam.family, r.opts.Priority-1, r.opts.Priority+1, true, -1
			d.Dst = &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
			out = append(out, gate{d})
		}
	}
	return out
}

// cover returns the smallest prefix holding every address of the family relayed.
func cover(routes []relay.Route, v4 bool) netip.Prefix {
	var lo, hi netip.Addr
	for _, rt := range routes {
		if rt.VIP.Is4() != v4 {
			continue
		}
		if !lo.IsValid() || rt.VIP.Less(lo) {
			lo = rt.VIP
		}
		if !hi.IsValid() || hi.Less(rt.VIP) {
			hi = rt.VIP
		}
	}
	if !lo.IsValid() {
		return netip.Prefix{}
	}
	a, b := lo.AsSlice(), hi.AsSlice()
	bits := 0
	for i := range a {
		x := a[i] ^ b[i]
		if x == 0 {
			bits += 8
			continue
		}
		for x&0x80 == 0 {
			bits++
			x <<= 1
		}
		break
	}
	p, _ := lo.Prefix(bits)
	return p
}

// bigSendBuffer lets one nftables transaction carry every flow: it is sent in one
// message, and the default socket buffer (about 200 KiB) holds about 2,000 of them.
// Forcing the size needs CAP_NET_ADMIN, which the speaker has; without it the default
// stays.
func bigSendBuffer(c *mnl.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	})
	return nil
}

// needForwarding says what is missing when the node does not forward.
func needForwarding(path string) error {
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		return fmt.Errorf("relaying needs %s set to 1 (it is %q)", path, strings.TrimSpace(string(b)))
	}
	return nil
}

func (r *Relay) ours(table int) bool {
	return table >= r.opts.FirstTable && table < r.opts.FirstTable+r.opts.Tables
}

// rules returns the relay's range rules among the kernel's.
func (r *Relay) rules(list []netlink.Rule) map[rule]*netlink.Rule {
	out := map[rule]*netlink.Rule{}
	for i := range list {
		nr := &list[i]
		if nr.Priority != r.opts.Priority || !r.ours(nr.Table) {
			continue
		}
		k := rule{proto: nr.IPProto, table: nr.Table}
		if nr.Dst != nil {
			k.vip, _ = netip.AddrFromSlice(nr.Dst.IP)
			k.vip = k.vip.Unmap()
		}
		if nr.Dport != nil {
			k.port = nr.Dport.Start
		}
		if nr.Sport != nil {
			k.from, k.to = nr.Sport.Start, nr.Sport.End
		}
		out[k] = nr
	}
	return out
}

// tables returns the gateway of each of the relay's routing tables that holds a route.
func (r *Relay) tables() (map[int]netip.Addr, error) {
	out := map[int]netip.Addr{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := dump(func() ([]netlink.Route, error) {
			return r.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, rt := range list {
			if !r.ours(rt.Table) {
				continue
			}
			gw, _ := netip.AddrFromSlice(rt.Gw)
			out[rt.Table] = gw.Unmap()
		}
	}
	return out, nil
}

func (r *Relay) netlinkRule(k rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Priority, nr.Table, nr.IPProto = r.opts.Priority, k.table, k.proto
	nr.Family = netlink.FAMILY_V4
	if k.vip.Is6() {
		nr.Family = netlink.FAMILY_V6
	}
	nr.Dst = &net.IPNet{IP: k.vip.AsSlice(), Mask: net.CIDRMask(k.vip.BitLen(), k.vip.BitLen())}
	nr.Dport = netlink.NewRulePortRange(k.port, k.port)
	nr.Sport = netlink.NewRulePortRange(k.from, k.to)
	return nr
}

func defaultRoute(table int, gw netip.Addr) *netlink.Route {
	bits := gw.BitLen()
	zero := netip.IPv4Unspecified()
	if gw.Is6() {
		zero = netip.IPv6Unspecified()
	}
	return &netlink.Route{Table: table, Gw: gw.AsSlice(), Dst: &net.IPNet{IP: zero.AsSlice(), Mask: net.CIDRMask(0, bits)}}
}

// setTable replaces the nftables table in one transaction, or removes it when there is
// nothing to relay; it writes nothing when the content is what it last wrote.
func (r *Relay) setTable(routes []relay.Route, links []int) error {
	sig := fmt.Sprint(routes, links)
	if sig == r.nft && !r.check {
		return nil
	}
	c, err := r.opts.NFT()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	exists := slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName })
	if sig == r.nft && exists == (len(routes) > 0) {
		r.check = false
		return nil
	}
	if exists {
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	}
	if len(routes) > 0 && len(links) > 0 {
		if err := addTable(c, routes, links); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program nftables table inet %s: %w", TableName, err)
	}
	r.nft, r.check = sig, false
	return nil
}

// family is what differs between IPv4 and IPv6 in the table.
type family struct {
	v4        bool
	nfproto   byte
	keyType   nftables.SetDatatype
	daddr     uint32 // offset of the destination address in the network header
	icmp      byte   // the ICMP protocol number
	redirect  byte   // its redirect type
	suffix    string // of the family's map and set names
	addrBytes uint32
}

var families = []family{
	{true, unix.NFPROTO_IPV4, nftables.TypeIPAddr, 16, unix.IPPROTO_ICMP, 5, "4", 4},
	{false, unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 24, unix.IPPROTO_ICMPV6, 137, "6", 16},
}

func addTable(c *nftables.Conn, routes []relay.Route, links []int) error {
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	uplinks := &nftables.Set{Table: tb, Name: "uplinks", KeyType: nftables.TypeIFIndex}
	var ls []nftables.SetElement
	for _, l := range links {
		ls = append(ls, nftables.SetElement{Key: binary.NativeEndian.AppendUint32(nil, uint32(l))})
	}
	if err := c.AddSet(uplinks, ls); err != nil {
		return fmt.Errorf("nftables set %s: %w", uplinks.Name, err)
	}
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	for _, f := range families {
		// flows: address . protocol . port . source-port range, one element per route;
		// addresses: a hash set of the same addresses, so that other traffic costs one
		// lookup.
		flows := &nftables.Set{Table: tb, Name: "flows" + f.suffix, Concatenation: true, Interval: true,
			KeyType: nftables.MustConcatSetType(f.keyType, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)}
		addrs := &nftables.Set{Table: tb, Name: "addresses" + f.suffix, KeyType: f.keyType}
		var fl, as []nftables.SetElement
		seen := map[netip.Addr]bool{}
		for _, rt := range routes {
			if rt.VIP.Is4() != f.v4 {
				continue
			}
			fl = append(fl, nftables.SetElement{Key: flowKey(rt, rt.From), KeyEnd: flowKey(rt, rt.To)})
			if !seen[rt.VIP] {
				seen[rt.VIP] = true
				as = append(as, nftables.SetElement{Key: rt.VIP.AsSlice()})
			}
		}
		if len(fl) == 0 {
			continue
		}
		if err := c.AddSet(addrs, as); err != nil {
			return fmt.Errorf("nftables set %s: %w", addrs.Name, err)
		}
		if err := c.AddSet(flows, fl); err != nil {
			return fmt.Errorf("nftables set %s: %w", flows.Name, err)
		}
		// The concatenation is loaded into consecutive 32-bit registers, each field padded
		// to 4 bytes, as the set's keys are.
		const reg32 = 8 // NFT_REG32_00
		proto := reg32 + f.addrBytes/4
		c.AddRule(&nftables.Rule{Table: tb, Chain: pre, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.addrBytes},
			&expr.Lookup{SourceRegister: 1, SetName: addrs.Name, SetID: addrs.ID},
			&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: uplinks.Name, SetID: uplinks.ID},
			&expr.Payload{DestRegister: reg32, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.addrBytes},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: proto},
			&expr.Payload{DestRegister: proto + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Payload{DestRegister: proto + 2, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Lookup{SourceRegister: reg32, SetName: flows.Name, SetID: flows.ID},
			&expr.Counter{},
			&expr.Notrack{},
		}})
		// A redirect carries the address it is about at offset 24 of the ICMP message:
		// inside the quoted IPv4 header (8 + 16), or as the ICMPv6 redirect's destination.
		c.AddRule(&nftables.Rule{Table: tb, Chain: out, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.icmp}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.redirect}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 24, Len: f.addrBytes},
			&expr.Lookup{SourceRegister: 1, SetName: addrs.Name, SetID: addrs.ID},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	return nil
}

// flowKey is a flows set key: the address, the protocol, the port and a source port,
// each padded to 4 bytes.
func flowKey(rt relay.Route, sport uint16) []byte {
	k := append(rt.VIP.AsSlice(), byte(rt.Proto), 0, 0, 0)
	k = binary.BigEndian.AppendUint16(k, rt.Port)
	k = append(k, 0, 0)
	k = binary.BigEndian.AppendUint16(k, sport)
	return append(k, 0, 0)
}

// Close removes everything the relay wrote.
func (r *Relay) Close() error {
	r.check = true
	return r.Set(nil)
}

// Watch calls changed whenever the kernel may have taken part of the relay's state away
// behind its back, until ctx ends: a route of its tables deleted (a link going down
// flushes the routes through it), a route towards a node it relays to added (the link or
// address back, so its table can be routed again), a relayed address becoming local (the
// local table comes first), or a link it relays through renamed (its gate names it). The
// caller's next Set puts things right; without it a flapped link would leave the relayed
// flows untracked and unrouted until the next resync. A subscription that fails (a burst
// of changes overflowing its buffer) is made again, after calling changed. ns is the
// namespace watched (nil: the caller's).
func (r *Relay) Watch(ctx context.Context, ns *netns.NsHandle, changed func()) error {
	const backoff = time.Second
	for first := true; ; first = false {
		err := r.watch(ctx, ns, changed)
		if ctx.Err() != nil {
			return nil
		}
		if first && err != nil {
			return err // cannot subscribe at all
		}
		changed() // messages may have been lost: look again
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
}

// watch is one subscription, until ctx ends or the subscription fails.
func (r *Relay) watch(ctx context.Context, ns *netns.NsHandle, changed func()) error {
	// A subscription that cannot receive (its buffer overflowed: messages lost) closes
	// its channel; the library's other error reports (a message it could not parse, one
	// not from the kernel) lose nothing of ours and are ignored. Its goroutine blocks
	// sending while a channel is full, so once done is closed the channels are read
	// until the library closes them.
	routes := make(chan netlink.RouteUpdate, 256)
	links := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{
		Namespace: ns, ReceiveBufferSize: 1 << 20, ReceiveBufferForceSize: true,
	}); err != nil {
		return fmt.Errorf("relay: subscribe to route changes: %w", err)
	}
	defer drain(routes)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
		Namespace: ns,
	}); err != nil {
		return fmt.Errorf("relay: subscribe to link changes: %w", err)
	}
	defer drain(links)
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-routes:
			if !ok {
				return errors.New("relay: route subscription ended")
			}
			if r.affects(u) {
				changed()
			}
		case u, ok := <-links:
			if !ok {
				return errors.New("relay: link subscription ended")
			}
			if r.renamed(u) {
				changed()
			}
		}
	}
}

// drain reads a subscription's channel, in the background, until its sender closes it.
func drain[T any](ch <-chan T) {
	go func() {
		for range ch {
		}
	}()
}

// watched is what Watch compares changes with: the state of the last Set.
type watched struct {
	mu      sync.Mutex
	gws     []netip.Addr   // the nodes relayed to
	vips    []netip.Addr   // the addresses relayed
	uplinks map[int]string // the links relayed through, by index, and their names
}

func (w *watched) set(gws, vips []netip.Addr, uplinks map[int]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gws, w.vips, w.uplinks = gws, vips, uplinks
}

// affects says whether a route change may concern the relay's state.
func (r *Relay) affects(u netlink.RouteUpdate) bool {
	if u.Type == unix.RTM_DELROUTE && r.ours(u.Table) {
		return true
	}
	// Otherwise, added or deleted: the subnet towards a node (a link or an address come
	// or gone; the kernel flushes IPv4 routes through a gone address without a word),
	// or a relayed address made local or no longer.
	if (u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE) || u.Dst == nil {
		return false
	}
	a, ok := netip.AddrFromSlice(u.Dst.IP)
	ones, _ := u.Dst.Mask.Size()
	p, err := a.Unmap().Prefix(ones)
	if !ok || err != nil {
		return false
	}
	r.seen.mu.Lock()
	defer r.seen.mu.Unlock()
	switch u.Table {
	case unix.RT_TABLE_MAIN:
		// Only a link route can make a node reachable or not (a default route covers
		// every node, and changes often where a routing daemon runs).
		return u.Gw == nil && len(u.MultiPath) == 0 && slices.ContainsFunc(r.seen.gws, p.Contains)
	case unix.RT_TABLE_LOCAL:
		return slices.ContainsFunc(r.seen.vips, p.Contains)
	}
	return false
}

// renamed says whether a link the relay goes through now has another name.
func (r *Relay) renamed(u netlink.LinkUpdate) bool {
	if u.Link == nil || u.Link.Attrs() == nil {
		return false
	}
	r.seen.mu.Lock()
	defer r.seen.mu.Unlock()
	name, ok := r.seen.uplinks[u.Link.Attrs().Index]
	return ok && name != u.Link.Attrs().Name
}
