package ipvs

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
)

// Options configure a Forwarder.
type Options struct {
	// Owns reports whether an address is Herald's (in one of its pools); only those, and
	// addresses found on herald0, are ever touched. Required.
	Owns       func(netip.Addr) bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: a private registry
}

// Forwarder makes the kernel hold exactly the virtual services it is handed, with their
// addresses on herald0 and Herald's nftables tables. It is not safe for concurrent use.
type Forwarder struct {
	k       Kernel
	owns    func(netip.Addr) bool
	log     *slog.Logger
	metrics *metrics.Forward

	synced bool // the kernel has been reconciled in full since New or Resync
	// onLink are the addresses herald0 held when the last full reconciliation began:
	// Herald's too, even if no pool holds them any more (a pool deleted from the config).
	onLink  map[netip.Addr]bool
	sysctls bool // the sysctls were set since New or Resync

	applied map[forward.Key]forward.Service // what the last successful Set put in place
	tables  *Tables                         // what the tables last programmed hold; nil: unknown
	addrs   map[netip.Addr]bool             // what herald0 last held of Herald's; nil: unknown
}

// New returns a Forwarder programming k. It touches nothing before Set.
func New(k Kernel, opts Options) (*Forwarder, error) {
	if k == nil || opts.Owns == nil {
		return nil, errors.New("forward: a Kernel and Options.Owns are required")
	}
	return &Forwarder{k: k, owns: opts.Owns, log: logging.OrDiscard(opts.Logger),
		metrics: metrics.NewForward(metrics.OrPrivate(opts.Registerer))}, nil
}

// Resync makes the next Set compare with the kernel in full rather than with what was
// last applied, undoing changes made behind Herald's back (kube-proxy in IPVS mode may
// delete services it did not create). The speaker calls it periodically.
func (f *Forwarder) Resync() { f.synced, f.sysctls, f.tables, f.addrs = false, false, nil, nil }

// Set makes IPVS and herald0 hold exactly services (and their addresses), among the
// addresses Herald owns. After the first, a Set touches only what differs from the last.
// With nothing to forward and nothing of Herald's left in the kernel, it changes
// nothing on the host: no link, no table, no sysctl.
func (f *Forwarder) Set(services []forward.Service) error {
	start := time.Now()
	err := f.set(services)
	f.metrics.ApplySeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		f.metrics.Errors.Inc()
		return err
	}
	rs := 0
	for _, s := range services {
		rs += len(s.RealServers)
	}
	f.metrics.VirtualServices.Set(float64(len(services)))
	f.metrics.RealServers.Set(float64(rs))
	return nil
}

func (f *Forwarder) set(services []forward.Service) error {
	want, err := f.check(services)
	if err != nil {
		return err
	}
	if !f.sysctls && len(want) > 0 {
		if err := f.k.Sysctls(); err != nil {
			return err
		}
		f.sysctls = true
	}
	if !f.synced {
		addrs, err := f.k.LinkAddrs()
		if err != nil {
			return err
		}
		f.onLink = map[netip.Addr]bool{}
		for _, a := range addrs {
			f.onLink[a] = true
		}
	}
	var errs []error
	// The kernel must not answer ARP for an address before it is on herald0, and
	// addresses go before the virtual services that take their traffic.
	if err := f.setTables(tablesFor(services)); err != nil {
		errs = append(errs, err)
	} else if err := f.setAddresses(vips(services)); err != nil {
		errs = append(errs, err)
	}
	if f.synced {
		errs = append(errs, f.setIncremental(want))
	} else {
		errs = append(errs, f.setFull(want))
	}
	if err := errors.Join(errs...); err != nil {
		f.Resync() // the next Set compares with the kernel in full
		return err
	}
	f.synced, f.applied = true, want
	return nil
}

// check validates services and indexes them by key, defaults filled in.
func (f *Forwarder) check(services []forward.Service) (map[forward.Key]forward.Service, error) {
	want := make(map[forward.Key]forward.Service, len(services))
	for _, s := range services {
		if !f.owns(s.VIP) {
			return nil, fmt.Errorf("%s is in no pool of Herald's: refusing to program it", s.VIP)
		}
		s.Scheduler = cmp.Or(s.Scheduler, forward.DefaultScheduler)
		if !forward.KnownScheduler(s.Scheduler) {
			return nil, fmt.Errorf("%s:%d/%s: unknown IPVS scheduler %q (want one of %v)", s.VIP, s.Port, s.Proto, s.Scheduler, forward.Schedulers)
		}
		want[s.Key()] = s
	}
	return want, nil
}

func vips(services []forward.Service) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, s := range services {
		out[s.VIP] = true
	}
	return out
}

// setTables programs the nftables tables when what they must hold changed (or is
// unknown): replaced whole, or removed when nothing needs them.
func (f *Forwarder) setTables(t Tables) error {
	if f.tables != nil && f.tables.Equal(t) {
		return nil
	}
	if t.Empty() {
		has, err := f.k.HasTables()
		if err != nil {
			return err
		}
		if has {
			if err := f.k.DelTables(); err != nil {
				return err
			}
		}
	} else if err := f.k.SetTables(t); err != nil {
		return err
	}
	f.tables = &t
	return nil
}

// setAddresses makes herald0 hold exactly want among Herald's addresses. The link is
// created only when there is an address to put on it.
func (f *Forwarder) setAddresses(want map[netip.Addr]bool) error {
	if f.addrs != nil && maps.Equal(f.addrs, want) {
		return nil
	}
	if err := f.applyAddresses(want); err != nil {
		return err
	}
	f.addrs = want
	return nil
}

func (f *Forwarder) applyAddresses(want map[netip.Addr]bool) error {
	have, err := f.k.LinkAddrs()
	if err != nil {
		return err
	}
	var errs []error
	held := map[netip.Addr]bool{}
	var gone []netip.Addr
	for _, a := range have {
		held[a] = true
		if !want[a] && f.mine(a) {
			gone = append(gone, a)
		}
	}
	if len(gone) > 0 {
		errs = append(errs, f.k.DelAddrs(gone))
	}
	if len(want) == 0 {
		return errors.Join(errs...)
	}
	if err := f.k.EnsureLink(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	var add []netip.Addr
	for _, a := range slices.SortedFunc(maps.Keys(want), netip.Addr.Compare) {
		if !held[a] {
			add = append(add, a)
		}
	}
	if len(add) > 0 {
		errs = append(errs, f.k.AddAddrs(add))
	}
	return errors.Join(errs...)
}

// setFull compares every virtual service of Herald's in the kernel with want, putting
// back what someone else deleted.
func (f *Forwarder) setFull(want map[forward.Key]forward.Service) error {
	have, err := f.k.Services()
	if err != nil {
		return err
	}
	var errs []error
	changes := make([]Change, 0, sizeHint(want))
	seen := map[forward.Key]bool{}
	for _, hs := range have {
		if hs.Foreign || !f.mine(hs.Key.VIP) {
			continue // not Herald's: kube-proxy's, or another tool's
		}
		seen[hs.Key] = true
		ws, wanted := want[hs.Key]
		if !wanted {
			changes = append(changes, Change{Op: OpDelService, Service: VirtualService{Key: hs.Key}})
			continue
		}
		if hs.Scheduler != ws.Scheduler || hs.Persistence != persistence(ws) {
			changes = append(changes, Change{Op: OpUpdateService, Service: virtual(ws)})
		}
		var err error
		if changes, err = f.destinationChanges(changes, ws, true); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(want), forward.Key.Compare) {
		if seen[k] {
			continue
		}
		if _, had := f.applied[k]; had {
			f.restored("virtual_service", k, netip.AddrPort{})
		}
		changes = addChanges(changes, want[k])
	}
	return errors.Join(append(errs, f.apply(changes, want))...)
}

// setIncremental applies the difference between want and what was last applied.
func (f *Forwarder) setIncremental(want map[forward.Key]forward.Service) error {
	var (
		errs    []error
		changes []Change
	)
	if len(f.applied) == 0 {
		changes = make([]Change, 0, sizeHint(want))
	}
	for _, k := range slices.SortedFunc(maps.Keys(f.applied), forward.Key.Compare) {
		if _, ok := want[k]; !ok {
			changes = append(changes, Change{Op: OpDelService, Service: VirtualService{Key: k}})
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(want), forward.Key.Compare) {
		s := want[k]
		old, ok := f.applied[k]
		switch {
		case !ok:
			changes = addChanges(changes, s)
		case old.Scheduler != s.Scheduler || old.Persistence != s.Persistence:
			changes = append(changes, Change{Op: OpUpdateService, Service: virtual(s)})
			fallthrough
		case !slices.Equal(old.RealServers, s.RealServers):
			var err error
			if changes, err = f.destinationChanges(changes, s, false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(append(errs, f.apply(changes, want))...)
}

// apply hands the kernel changes in one go and reports each failure, naming the
// change; a real server of a service that could not be added is not reported again.
func (f *Forwarder) apply(changes []Change, want map[forward.Key]forward.Service) error {
	if len(changes) == 0 {
		return nil
	}
	results := f.k.Apply(changes)
	var errs []error
	failed := map[forward.Key]bool{} // services not added
	for i, c := range changes {
		var err error
		if results != nil {
			err = results[i]
		}
		k := c.Service.Key
		switch {
		case err != nil && c.Op == OpAddService:
			failed[k] = true
			errs = append(errs, fmt.Errorf("%s: %w", c, err))
		case err != nil && !failed[k]:
			errs = append(errs, fmt.Errorf("%s: %w", c, err))
		case err != nil:
		case c.Op == OpAddService:
			s := want[k]
			f.log.Info("IPVS service added", "ip", k.VIP, "port", k.Port, "protocol", k.Proto.String(), "scheduler", s.Scheduler, "realServers", len(s.RealServers))
		case c.Op == OpDelService:
			f.log.Info("IPVS service removed", "ip", k.VIP, "port", k.Port, "protocol", k.Proto.String())
		}
	}
	return errors.Join(errs...)
}

func persistence(s forward.Service) time.Duration {
	if s.Persistence <= 0 {
		return 0
	}
	return s.Persistence.Truncate(time.Second)
}

func virtual(s forward.Service) VirtualService {
	return VirtualService{Key: s.Key(), Scheduler: s.Scheduler, Persistence: persistence(s)}
}

func keyString(k forward.Key) string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

// sizeHint is the number of changes that add want from nothing.
func sizeHint(want map[forward.Key]forward.Service) int {
	n := len(want)
	for _, s := range want {
		n += len(s.RealServers)
	}
	return n
}

// addChanges appends the changes that add s and its real servers.
func addChanges(changes []Change, s forward.Service) []Change {
	changes = append(changes, Change{Op: OpAddService, Service: virtual(s)})
	for _, r := range s.RealServers {
		changes = append(changes, Change{Op: OpAddDestination, Service: VirtualService{Key: s.Key()}, Dest: dest(r)})
	}
	return changes
}

func dest(r forward.RealServer) Destination {
	return Destination{Addr: r.Addr, Port: r.Port, Weight: max(r.Weight, 1)}
}

// destinationChanges appends the changes that bring the real servers of an existing
// virtual service in line with s; in a full reconciliation, one missing that was
// applied before is counted as restored.
func (f *Forwarder) destinationChanges(changes []Change, s forward.Service, full bool) ([]Change, error) {
	k := s.Key()
	have, err := f.k.Destinations(k)
	if err != nil {
		return changes, fmt.Errorf("list real servers of %s: %w", keyString(k), err)
	}
	want := make(map[netip.AddrPort]forward.RealServer, len(s.RealServers))
	for _, r := range s.RealServers {
		want[netip.AddrPortFrom(r.Addr, r.Port)] = r
	}
	svc := VirtualService{Key: k}
	for _, d := range have {
		ap := netip.AddrPortFrom(d.Addr, d.Port)
		r, ok := want[ap]
		switch {
		case !ok:
			changes = append(changes, Change{Op: OpDelDestination, Service: svc, Dest: d})
		case d.Weight != max(r.Weight, 1):
			changes = append(changes, Change{Op: OpUpdateDestination, Service: svc, Dest: dest(r)})
		}
		delete(want, ap)
	}
	had := f.applied[k].RealServers
	for _, ap := range slices.SortedFunc(maps.Keys(want), func(a, b netip.AddrPort) int { return a.Compare(b) }) {
		if full && slices.ContainsFunc(had, func(h forward.RealServer) bool { return netip.AddrPortFrom(h.Addr, h.Port) == ap }) {
			f.restored("real_server", k, ap)
		}
		changes = append(changes, Change{Op: OpAddDestination, Service: svc, Dest: dest(want[ap])})
	}
	return changes, nil
}

// restored says that state Herald had programmed was found gone and put back.
func (f *Forwarder) restored(kind string, k forward.Key, rs netip.AddrPort) {
	f.metrics.Restored.WithLabelValues(kind).Inc()
	args := []any{"kind", kind, "ip", k.VIP, "port", k.Port, "protocol", k.Proto.String()}
	if rs.IsValid() {
		args = append(args, "realServer", rs)
	}
	f.log.Warn("IPVS state Herald programmed was deleted by someone else; restored (kube-proxy in IPVS mode needs --ipvs-exclude-cidrs with Herald's pools)", args...)
}

// mine reports whether an address is Herald's to remove: in a pool, or found on herald0.
func (f *Forwarder) mine(a netip.Addr) bool { return f.owns(a) || f.onLink[a] }
