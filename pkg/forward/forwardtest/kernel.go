// Package forwardtest is a stateful in-memory stand-in for the kernel beneath the IPVS
// forwarder (ipvs.Kernel): virtual services and destinations, the addresses on herald0,
// Herald's nftables tables and the sysctls. Tests assert the state it ends in, and can
// change it behind the forwarder's back or make a verb fail.
package forwardtest

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
)

// Kernel is the fake. The zero value is not usable: call New.
type Kernel struct {
	mu       sync.Mutex
	services map[forward.Key]*service
	link     bool // herald0 exists
	addrs    map[netip.Addr]bool
	tables   *ipvs.Tables
	sysctls  bool
	fail     map[string]error // verb -> error returned once
	// NoDummy makes EnsureLink fail as on a kernel without the dummy link type.
	NoDummy bool
	writes  int
}

type service struct {
	v     ipvs.VirtualService
	dests map[netip.AddrPort]ipvs.Destination
}

var _ ipvs.Kernel = (*Kernel)(nil)

// New returns an empty kernel: no virtual service, no herald0, no table.
func New() *Kernel {
	return &Kernel{services: map[forward.Key]*service{}, addrs: map[netip.Addr]bool{}, fail: map[string]error{}}
}

// FailNext makes the next call of verb (a method name, such as "AddService") fail with err.
func (k *Kernel) FailNext(verb string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail[verb] = err
}

func (k *Kernel) failing(verb string) error {
	if err, ok := k.fail[verb]; ok {
		delete(k.fail, verb)
		return err
	}
	return nil
}

// Writes counts the calls that changed (or tried to change) the kernel.
func (k *Kernel) Writes() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.writes
}

func (k *Kernel) write(verb string) error {
	k.writes++
	return k.failing(verb)
}

// Services lists every virtual service.
func (k *Kernel) Services() ([]ipvs.VirtualService, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.failing("Services"); err != nil {
		return nil, err
	}
	out := make([]ipvs.VirtualService, 0, len(k.services))
	for _, key := range slices.SortedFunc(maps.Keys(k.services), forward.Key.Compare) {
		out = append(out, k.services[key].v)
	}
	return out, nil
}

// AddService adds a virtual service, or updates one that exists.
func (k *Kernel) AddService(v ipvs.VirtualService) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("AddService"); err != nil {
		return err
	}
	if s := k.services[v.Key]; s != nil {
		s.v = v
		return nil
	}
	k.services[v.Key] = &service{v: v, dests: map[netip.AddrPort]ipvs.Destination{}}
	return nil
}

// UpdateService changes an existing virtual service.
func (k *Kernel) UpdateService(v ipvs.VirtualService) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("UpdateService"); err != nil {
		return err
	}
	s := k.services[v.Key]
	if s == nil {
		return fmt.Errorf("no such service %v", v.Key)
	}
	s.v = v
	return nil
}

// DelService removes a virtual service; one already gone is no error.
func (k *Kernel) DelService(key forward.Key) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("DelService"); err != nil {
		return err
	}
	delete(k.services, key)
	return nil
}

// Destinations lists a virtual service's real servers.
func (k *Kernel) Destinations(key forward.Key) ([]ipvs.Destination, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.failing("Destinations"); err != nil {
		return nil, err
	}
	s := k.services[key]
	if s == nil {
		return nil, fmt.Errorf("no such service %v", key)
	}
	return slices.SortedFunc(maps.Values(s.dests), compareDest), nil
}

func compareDest(a, b ipvs.Destination) int {
	return netip.AddrPortFrom(a.Addr, a.Port).Compare(netip.AddrPortFrom(b.Addr, b.Port))
}

func (k *Kernel) setDest(verb string, key forward.Key, d ipvs.Destination, mustExist bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write(verb); err != nil {
		return err
	}
	s := k.services[key]
	if s == nil {
		return fmt.Errorf("no such service %v", key)
	}
	ap := netip.AddrPortFrom(d.Addr, d.Port)
	if _, ok := s.dests[ap]; mustExist && !ok {
		return fmt.Errorf("no such destination %s", ap)
	}
	s.dests[ap] = d
	return nil
}

// AddDestination adds a real server, or updates one that exists.
func (k *Kernel) AddDestination(key forward.Key, d ipvs.Destination) error {
	return k.setDest("AddDestination", key, d, false)
}

// UpdateDestination changes an existing real server.
func (k *Kernel) UpdateDestination(key forward.Key, d ipvs.Destination) error {
	return k.setDest("UpdateDestination", key, d, true)
}

// DelDestination removes a real server; one already gone is no error.
func (k *Kernel) DelDestination(key forward.Key, d ipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("DelDestination"); err != nil {
		return err
	}
	if s := k.services[key]; s != nil {
		delete(s.dests, netip.AddrPortFrom(d.Addr, d.Port))
	}
	return nil
}

// Apply makes the changes one by one with the verbs above.
func (k *Kernel) Apply(changes []ipvs.Change) []error {
	var errs []error
	for i, c := range changes {
		var err error
		switch c.Op {
		case ipvs.OpAddService:
			err = k.AddService(c.Service)
		case ipvs.OpUpdateService:
			err = k.UpdateService(c.Service)
		case ipvs.OpDelService:
			err = k.DelService(c.Service.Key)
		case ipvs.OpAddDestination:
			err = k.AddDestination(c.Service.Key, c.Dest)
		case ipvs.OpUpdateDestination:
			err = k.UpdateDestination(c.Service.Key, c.Dest)
		case ipvs.OpDelDestination:
			err = k.DelDestination(c.Service.Key, c.Dest)
		default:
			err = fmt.Errorf("unknown change %v", c.Op)
		}
		if err != nil {
			if errs == nil {
				errs = make([]error, len(changes))
			}
			errs[i] = err
		}
	}
	return errs
}

// LinkAddrs returns the addresses on herald0, sorted; none without the link.
func (k *Kernel) LinkAddrs() ([]netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.failing("LinkAddrs"); err != nil {
		return nil, err
	}
	return slices.SortedFunc(maps.Keys(k.addrs), netip.Addr.Compare), nil
}

// EnsureLink creates herald0.
func (k *Kernel) EnsureLink() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("EnsureLink"); err != nil {
		return err
	}
	if k.NoDummy {
		return fmt.Errorf("%w: create %s: operation not supported", ipvs.ErrUnsupported, ipvs.LinkName)
	}
	k.link = true
	return nil
}

// AddAddr puts an address on herald0, which must exist.
func (k *Kernel) AddAddr(a netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("AddAddr"); err != nil {
		return err
	}
	if !k.link {
		return errors.New("no link herald0")
	}
	k.addrs[a] = true
	return nil
}

// DelAddr removes an address from herald0.
func (k *Kernel) DelAddr(a netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("DelAddr"); err != nil {
		return err
	}
	delete(k.addrs, a)
	return nil
}

// AddAddrs puts addresses on herald0 one by one.
func (k *Kernel) AddAddrs(addrs []netip.Addr) error {
	var errs []error
	for _, a := range addrs {
		errs = append(errs, k.AddAddr(a))
	}
	return errors.Join(errs...)
}

// DelAddrs removes addresses from herald0 one by one.
func (k *Kernel) DelAddrs(addrs []netip.Addr) error {
	var errs []error
	for _, a := range addrs {
		errs = append(errs, k.DelAddr(a))
	}
	return errors.Join(errs...)
}

// HasTables reports whether Herald's tables exist.
func (k *Kernel) HasTables() (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.tables != nil, k.failing("HasTables")
}

// SetTables replaces Herald's tables.
func (k *Kernel) SetTables(t ipvs.Tables) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("SetTables"); err != nil {
		return err
	}
	k.tables = &t
	return nil
}

// DelTables removes Herald's tables.
func (k *Kernel) DelTables() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("DelTables"); err != nil {
		return err
	}
	k.tables = nil
	return nil
}

// Sysctls records that the forwarding sysctls were set.
func (k *Kernel) Sysctls() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.write("Sysctls"); err != nil {
		return err
	}
	k.sysctls = true
	return nil
}

// Tables returns what Herald's tables hold, and whether they exist.
func (k *Kernel) Tables() (ipvs.Tables, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.tables == nil {
		return ipvs.Tables{}, false
	}
	return *k.tables, true
}

// Link reports whether herald0 exists.
func (k *Kernel) Link() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.link
}

// Dump writes the IPVS state of any Kernel, this fake or the real one, as
// "vip:port/proto sched [persistent T] -> rs:port*w, …", one line per virtual service,
// sorted, so that one test table can check both.
func Dump(k ipvs.Kernel) ([]string, error) {
	svcs, err := k.Services()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range svcs {
		line := netip.AddrPortFrom(s.Key.VIP, s.Key.Port).String() + "/" + s.Key.Proto.String() + " " + s.Scheduler
		if s.Persistence > 0 {
			line += " persistent " + s.Persistence.Truncate(time.Second).String()
		}
		ds, err := k.Destinations(s.Key)
		if err != nil {
			return nil, err
		}
		var parts []string
		for _, d := range ds {
			parts = append(parts, netip.AddrPortFrom(d.Addr, d.Port).String()+"*"+strings.Repeat("|", d.Weight))
		}
		slices.Sort(parts)
		out = append(out, line+" -> "+strings.Join(parts, ","))
	}
	slices.Sort(out)
	return out, nil
}
