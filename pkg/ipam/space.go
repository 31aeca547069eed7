package ipam

import (
	"math/big"
	"net/netip"

	"github.com/google/btree"

	"github.com/heraldlb/herald/pkg/config"
)

// interval is an inclusive run of free addresses.
type interval struct{ first, last netip.Addr }

func byFirst(a, b interval) bool { return a.first.Less(b.first) }

// space is the addresses of one family in one pool: its ranges, and which of them are free.
type space struct {
	ranges   []config.AddressRange
	free     *btree.BTreeG[interval]
	avoid    bool     // skip IPv4 .0 and .255 when choosing
	capacity *big.Int // addresses that may be handed out
	inUse    int      // distinct addresses held
}

func newSpace(ranges []config.AddressRange, avoid bool, held []netip.Addr) *space {
	s := &space{ranges: ranges, free: btree.NewG(16, byFirst), avoid: avoid, capacity: new(big.Int)}
	for _, r := range ranges {
		s.free.ReplaceOrInsert(interval{r.First, r.Last})
		n := new(big.Int).Sub(addrInt(r.Last), addrInt(r.First))
		s.capacity.Add(s.capacity, n.Add(n, big.NewInt(1)))
		if avoid && r.First.Is4() {
			s.capacity.Sub(s.capacity, big.NewInt(int64(buggyIn(r))))
		}
	}
	for _, a := range held {
		s.take(a)
	}
	return s
}

func addrInt(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }

// buggyIn counts the addresses ending in .0 or .255 in an IPv4 range.
func buggyIn(r config.AddressRange) int {
	f, l := r.First.As4(), r.Last.As4()
	first := uint32(f[0])<<24 | uint32(f[1])<<16 | uint32(f[2])<<8 | uint32(f[3])
	last := uint32(l[0])<<24 | uint32(l[1])<<16 | uint32(l[2])<<8 | uint32(l[3])
	// count of n in [first, last] with n%256 == k is floor((last-k)/256) - floor((first-1-k)/256).
	count := func(k uint32) int {
		upto := func(x int64) int64 { // multiples of the form 256m+k that are <= x, m >= 0
			if x < int64(k) {
				return 0
			}
			return (x-int64(k))/256 + 1
		}
		return int(upto(int64(last)) - upto(int64(first)-1))
	}
	return count(0) + count(255)
}

// buggy reports whether a is an IPv4 address that old firmware mistakes for a network or
// broadcast address.
func buggy(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	return b[3] == 0 || b[3] == 255
}

func (s *space) contains(a netip.Addr) bool {
	for _, r := range s.ranges {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

// holding returns the free interval holding a.
func (s *space) holding(a netip.Addr) (interval, bool) {
	var found interval
	ok := false
	s.free.DescendLessOrEqual(interval{first: a}, func(iv interval) bool {
		if a.Compare(iv.last) <= 0 {
			found, ok = iv, true
		}
		return false
	})
	return found, ok
}

func (s *space) isFree(a netip.Addr) bool {
	_, ok := s.holding(a)
	return ok
}

// take marks a as used. It does nothing when a is not free.
func (s *space) take(a netip.Addr) {
	iv, ok := s.holding(a)
	if !ok {
		return
	}
	s.free.Delete(iv)
	if iv.first.Less(a) {
		s.free.ReplaceOrInsert(interval{iv.first, a.Prev()})
	}
	if a.Less(iv.last) {
		s.free.ReplaceOrInsert(interval{a.Next(), iv.last})
	}
	s.inUse++
}

// give marks a as free again, merging it with its free neighbours.
func (s *space) give(a netip.Addr) {
	merged := interval{a, a}
	if p := a.Prev(); p.IsValid() {
		s.free.DescendLessOrEqual(interval{first: p}, func(iv interval) bool {
			if iv.last == p {
				s.free.Delete(iv)
				merged.first = iv.first
			}
			return false
		})
	}
	if n := a.Next(); n.IsValid() {
		if iv, ok := s.free.Get(interval{first: n}); ok {
			s.free.Delete(iv)
			merged.last = iv.last
		}
	}
	s.free.ReplaceOrInsert(merged)
	s.inUse--
}

// lowestFree returns the lowest address that may be handed out.
func (s *space) lowestFree() (netip.Addr, bool) {
	var found netip.Addr
	s.free.Ascend(func(iv interval) bool {
		for a := iv.first; ; a = a.Next() {
			if !s.avoid || !buggy(a) {
				found = a
				return false
			}
			if a == iv.last {
				return true // every address here is avoided; try the next interval
			}
		}
	})
	return found, found.IsValid()
}
