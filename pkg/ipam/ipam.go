package ipam

import (
	"cmp"
	"fmt"
	"maps"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/transport"
)

// Family is an IP address family.
type Family uint8

// The address families.
const (
	IPv4 Family = iota
	IPv6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Port is one (protocol, port) a Service exposes; two Services sharing an address may not
// use the same one.
type Port struct {
	Protocol transport.Protocol
	Port     uint16
}

func (p Port) String() string { return fmt.Sprintf("%s/%d", p.Protocol, p.Port) }

// Request is what a Service asks for.
type Request struct {
	Service    string       // identity of the Service, for example "namespace/name"
	Families   []Family     // one address for each, in this order
	Pool       string       // a pool asked for by name; "" for any auto-assign pool
	IPs        []netip.Addr // specific addresses asked for, at most one per family
	SharingKey string       // Services with the same non-empty key may share addresses
	BackendKey string       // for externalTrafficPolicy Local, the pod selector; "" otherwise
	Ports      []Port
}

// Assignment is what a Service holds.
type Assignment struct {
	Pool string
	IPs  []netip.Addr // one per requested family, in the request's order
}

// Reason classifies why a request was not met.
type Reason uint8

// The reasons a request can fail.
const (
	InvalidRequest  Reason = iota + 1 // the request contradicts itself
	UnknownPool                       // the pool asked for does not exist
	PoolExhausted                     // no free address of a needed family
	IPUnavailable                     // the address asked for is outside the pools, avoided, or held
	SharingConflict                   // the address is held by Services it may not be shared with
)

func (r Reason) String() string {
	switch r {
	case InvalidRequest:
		return "invalid_request"
	case UnknownPool:
		return "unknown_pool"
	case PoolExhausted:
		return "pool_exhausted"
	case IPUnavailable:
		return "ip_unavailable"
	case SharingConflict:
		return "sharing_conflict"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Error is a request that could not be met, and why.
type Error struct {
	Reason Reason
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func fail(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// Allocator tracks which Service holds which addresses. It is not safe for concurrent use.
type Allocator struct {
	pools   []*pool // configuration order
	byName  map[string]*pool
	holders map[string]*holder      // by Service
	used    map[netip.Addr]*ipUse   // addresses held by at least one Service
	byKey   map[string][]netip.Addr // sharing key -> addresses held under it, sorted
}

type pool struct {
	name       string
	autoAssign bool
	space      [2]*space // by Family; nil when the pool has no address of that family
}

func (p *pool) contains(a netip.Addr) bool {
	s := p.space[FamilyOf(a)]
	return s != nil && s.contains(a)
}

type holder struct {
	service    string
	pool       *pool
	ips        []netip.Addr
	sharingKey string
	backendKey string
	ports      []Port
}

type ipUse struct {
	pool    *pool
	holders []*holder // sorted by service
}

// New returns an allocator for pools. It holds no addresses yet.
func New(pools []config.Pool) *Allocator {
	a := &Allocator{
		holders: map[string]*holder{},
		used:    map[netip.Addr]*ipUse{},
		byKey:   map[string][]netip.Addr{},
	}
	a.pools, a.byName = buildPools(pools, nil)
	return a
}

func buildPools(cfg []config.Pool, held map[string][]netip.Addr) ([]*pool, map[string]*pool) {
	pools := make([]*pool, 0, len(cfg))
	byName := make(map[string]*pool, len(cfg))
	for _, c := range cfg {
		p := &pool{name: c.Name, autoAssign: c.AutoAssign}
		var byFam [2][]config.AddressRange
		for _, r := range c.Addresses {
			f := FamilyOf(r.First)
			byFam[f] = append(byFam[f], r)
		}
		for f, rs := range byFam {
			if len(rs) == 0 {
				continue
			}
			slices.SortFunc(rs, func(x, y config.AddressRange) int { return x.First.Compare(y.First) })
			var h []netip.Addr
			for _, ip := range held[c.Name] {
				if FamilyOf(ip) == Family(f) {
					h = append(h, ip)
				}
			}
			p.space[f] = newSpace(rs, c.AvoidBuggyIPs, h)
		}
		pools = append(pools, p)
		byName[c.Name] = p
	}
	return pools, byName
}

// poolOf returns the pool that holds ip.
func poolOf(pools []*pool, ip netip.Addr) *pool {
	for _, p := range pools {
		if p.contains(ip) {
			return p
		}
	}
	return nil
}

// SetPools replaces the pools. It refuses, changing nothing, when an address some Service
// holds would be in no pool.
func (a *Allocator) SetPools(cfg []config.Pool) error {
	probe, _ := buildPools(cfg, nil)
	var lost []string
	held := map[string][]netip.Addr{}
	for _, ip := range slices.SortedFunc(maps.Keys(a.used), netip.Addr.Compare) {
		p := poolOf(probe, ip)
		if p == nil {
			var svcs []string
			for _, h := range a.used[ip].holders {
				svcs = append(svcs, h.service)
			}
			lost = append(lost, fmt.Sprintf("%s (held by %s)", ip, strings.Join(svcs, ", ")))
			continue
		}
		held[p.name] = append(held[p.name], ip)
	}
	if len(lost) > 0 {
		return fmt.Errorf("the new pools leave out addresses in use: %s", strings.Join(lost, "; "))
	}
	a.pools, a.byName = buildPools(cfg, held)
	for ip, u := range a.used {
		u.pool = poolOf(a.pools, ip)
	}
	for _, h := range a.holders {
		h.pool = a.used[h.ips[0]].pool
	}
	return nil
}

// Assigned returns what service holds.
func (a *Allocator) Assigned(service string) (Assignment, bool) {
	h, ok := a.holders[service]
	if !ok {
		return Assignment{}, false
	}
	return Assignment{Pool: h.pool.name, IPs: slices.Clone(h.ips)}, true
}

// Held returns every address held and by whom, sorted by address, then Service.
func (a *Allocator) Held() []config.Held {
	var out []config.Held
	for _, ip := range slices.SortedFunc(maps.Keys(a.used), netip.Addr.Compare) {
		for _, h := range a.used[ip].holders {
			out = append(out, config.Held{Service: h.service, IP: ip})
		}
	}
	return out
}

// Assign gives req.Service addresses that meet req, keeping what it already holds when
// that still meets req. When req cannot be met, the Service keeps what it held as long
// as it may still share those addresses under req's terms; otherwise it loses them. The
// error is an *Error.
func (a *Allocator) Assign(req Request) (Assignment, error) {
	if err := checkRequest(req); err != nil {
		return Assignment{}, err
	}
	cur := a.holders[req.Service]
	if cur != nil {
		a.drop(cur)
		if a.meets(cur, req) && a.shareable(cur.ips, req) == nil {
			return a.commit(req, cur.pool, cur.ips), nil
		}
	}
	p, ips, err := a.choose(req)
	if err == nil {
		return a.commit(req, p, ips), nil
	}
	if cur != nil && a.shareable(cur.ips, req) == nil {
		a.commit(req, cur.pool, cur.ips)
	}
	return Assignment{}, err
}

// Restore records that req.Service already holds ips (read back from the cluster after a
// restart). Pool policy (auto-assign, avoid-buggy-ips) is not applied to what is already
// held, but the addresses must lie in one pool and be shareable with their other holders.
func (a *Allocator) Restore(req Request, ips []netip.Addr) (Assignment, error) {
	if len(ips) == 0 {
		return Assignment{}, fail(InvalidRequest, "nothing to restore")
	}
	fams := map[Family]bool{}
	var p *pool
	for _, ip := range ips {
		if fams[FamilyOf(ip)] {
			return Assignment{}, fail(InvalidRequest, "more than one %s address: %v", FamilyOf(ip), ips)
		}
		fams[FamilyOf(ip)] = true
		q := poolOf(a.pools, ip)
		if q == nil {
			return Assignment{}, fail(IPUnavailable, "%s is in no pool", ip)
		}
		if p != nil && q != p {
			return Assignment{}, fail(InvalidRequest, "addresses %v lie in different pools", ips)
		}
		p = q
	}
	if cur := a.holders[req.Service]; cur != nil {
		a.drop(cur)
	}
	if err := a.shareable(ips, req); err != nil {
		return Assignment{}, err
	}
	return a.commit(req, p, ips), nil
}

// Release frees what service holds. Releasing a Service that holds nothing does nothing.
func (a *Allocator) Release(service string) {
	if h := a.holders[service]; h != nil {
		a.drop(h)
	}
}

func checkRequest(req Request) error {
	if req.Service == "" {
		return fail(InvalidRequest, "a request needs a Service")
	}
	if len(req.Families) == 0 || len(req.Families) > 2 || (len(req.Families) == 2 && req.Families[0] == req.Families[1]) {
		return fail(InvalidRequest, "ask for one address family, or both once each: %v", req.Families)
	}
	seen := map[Family]bool{}
	for _, ip := range req.IPs {
		f := FamilyOf(ip)
		if !slices.Contains(req.Families, f) {
			return fail(InvalidRequest, "requested %s is %s, but the Service's families are %v", ip, f, req.Families)
		}
		if seen[f] {
			return fail(InvalidRequest, "more than one %s address requested: %v", f, req.IPs)
		}
		seen[f] = true
	}
	return nil
}

// meets reports whether h's addresses answer req's pool, families and requested IPs. A
// pool that has since stopped being auto-assign still meets: held addresses never move
// because of a configuration change.
func (a *Allocator) meets(h *holder, req Request) bool {
	if req.Pool != "" && h.pool.name != req.Pool {
		return false
	}
	if len(h.ips) != len(req.Families) {
		return false
	}
	for i, f := range req.Families {
		if FamilyOf(h.ips[i]) != f {
			return false
		}
	}
	for _, want := range req.IPs {
		if !slices.Contains(h.ips, want) {
			return false
		}
	}
	return true
}

// choose finds a pool and addresses for req, holding nothing yet.
func (a *Allocator) choose(req Request) (*pool, []netip.Addr, error) {
	var candidates []*pool
	switch {
	case req.Pool != "":
		p, ok := a.byName[req.Pool]
		if !ok {
			return nil, nil, fail(UnknownPool, "pool %q does not exist", req.Pool)
		}
		candidates = []*pool{p}
	case len(req.IPs) > 0:
		p := poolOf(a.pools, req.IPs[0])
		if p == nil {
			return nil, nil, fail(IPUnavailable, "requested %s is in no pool", req.IPs[0])
		}
		candidates = []*pool{p}
	default:
		for _, p := range a.pools {
			if p.autoAssign {
				candidates = append(candidates, p)
			}
		}
		if len(candidates) == 0 {
			return nil, nil, fail(PoolExhausted, "no pool has auto-assign enabled")
		}
	}
	var first error
	for _, p := range candidates {
		ips, err := a.pick(p, req)
		if err == nil {
			return p, ips, nil
		}
		if first == nil {
			first = err
		}
	}
	if len(candidates) > 1 {
		return nil, nil, fail(PoolExhausted, "no auto-assign pool has a free %v address", req.Families)
	}
	return nil, nil, first
}

// pick chooses one address per family of req from p.
func (a *Allocator) pick(p *pool, req Request) ([]netip.Addr, error) {
	out := make([]netip.Addr, len(req.Families))
	for i, f := range req.Families {
		s := p.space[f]
		want, asked := requested(req.IPs, f)
		switch {
		case asked:
			if !p.contains(want) {
				return nil, fail(IPUnavailable, "requested %s is not in pool %q", want, p.name)
			}
			if s.isFree(want) {
				if s.avoid && buggy(want) {
					return nil, fail(IPUnavailable, "requested %s is avoided by pool %q (avoid-buggy-ips)", want, p.name)
				}
			} else if err := a.shareable([]netip.Addr{want}, req); err != nil {
				return nil, err
			}
			out[i] = want
		case s == nil:
			return nil, fail(PoolExhausted, "pool %q has no %s addresses", p.name, f)
		default:
			ip, ok := s.lowestFree()
			// With a sharing key, an address already held under the same key may come first.
			for _, held := range a.byKey[req.SharingKey] {
				if ok && !held.Less(ip) {
					break
				}
				if FamilyOf(held) == f && a.used[held].pool == p && a.shareable([]netip.Addr{held}, req) == nil {
					ip, ok = held, true
					break
				}
			}
			if !ok {
				return nil, fail(PoolExhausted, "pool %q has no free %s address", p.name, f)
			}
			out[i] = ip
		}
	}
	return out, nil
}

func requested(ips []netip.Addr, f Family) (netip.Addr, bool) {
	for _, ip := range ips {
		if FamilyOf(ip) == f {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// shareable reports whether req may hold every one of ips alongside their current holders.
func (a *Allocator) shareable(ips []netip.Addr, req Request) *Error {
	for _, ip := range ips {
		u := a.used[ip]
		if u == nil {
			continue
		}
		for _, h := range u.holders {
			if h.service == req.Service {
				continue
			}
			if req.SharingKey == "" || h.sharingKey != req.SharingKey {
				return fail(IPUnavailable, "%s is held by %s and may not be shared with it (sharing keys %q and %q)", ip, h.service, h.sharingKey, req.SharingKey)
			}
			if h.backendKey != req.BackendKey {
				return fail(SharingConflict, "%s is held by %s with another traffic policy or pod selector: services with externalTrafficPolicy Local share an address only with Local services selecting the same pods", ip, h.service)
			}
			for _, p := range req.Ports {
				if slices.Contains(h.ports, p) {
					return fail(SharingConflict, "port %s on %s is already used by %s", p, ip, h.service)
				}
			}
		}
	}
	return nil
}

func (a *Allocator) commit(req Request, p *pool, ips []netip.Addr) Assignment {
	h := &holder{
		service: req.Service, pool: p, ips: slices.Clone(ips),
		sharingKey: req.SharingKey, backendKey: req.BackendKey, ports: slices.Clone(req.Ports),
	}
	a.holders[req.Service] = h
	for _, ip := range ips {
		u := a.used[ip]
		if u == nil {
			u = &ipUse{pool: p}
			a.used[ip] = u
			u.pool.space[FamilyOf(ip)].take(ip)
			if req.SharingKey != "" {
				a.byKey[req.SharingKey] = insertSorted(a.byKey[req.SharingKey], ip)
			}
		}
		i, _ := slices.BinarySearchFunc(u.holders, h.service, func(x *holder, s string) int { return cmp.Compare(x.service, s) })
		u.holders = slices.Insert(u.holders, i, h)
	}
	return Assignment{Pool: p.name, IPs: slices.Clone(ips)}
}

// drop removes h, freeing addresses that no one else holds.
func (a *Allocator) drop(h *holder) {
	delete(a.holders, h.service)
	for _, ip := range h.ips {
		u := a.used[ip]
		u.holders = slices.DeleteFunc(u.holders, func(x *holder) bool { return x == h })
		if len(u.holders) > 0 {
			continue
		}
		delete(a.used, ip)
		u.pool.space[FamilyOf(ip)].give(ip)
		if h.sharingKey != "" {
			keyed := a.byKey[h.sharingKey]
			if i, ok := slices.BinarySearchFunc(keyed, ip, netip.Addr.Compare); ok {
				keyed = slices.Delete(keyed, i, i+1)
			}
			if len(keyed) == 0 {
				delete(a.byKey, h.sharingKey)
			} else {
				a.byKey[h.sharingKey] = keyed
			}
		}
	}
}

func insertSorted(s []netip.Addr, ip netip.Addr) []netip.Addr {
	i, found := slices.BinarySearchFunc(s, ip, netip.Addr.Compare)
	if found {
		return s
	}
	return slices.Insert(s, i, ip)
}

// PoolStats is how full one family of one pool is.
type PoolStats struct {
	Pool     string
	Family   Family
	Capacity *big.Int // addresses that may be handed out
	InUse    int      // distinct addresses held
}

// Stats returns the fill of every pool and family, in configuration order.
func (a *Allocator) Stats() []PoolStats {
	var out []PoolStats
	for _, p := range a.pools {
		for f, s := range p.space {
			if s != nil {
				out = append(out, PoolStats{Pool: p.name, Family: Family(f), Capacity: new(big.Int).Set(s.capacity), InUse: s.inUse})
			}
		}
	}
	return out
}
