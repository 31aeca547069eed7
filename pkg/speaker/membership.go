package speaker

import (
	"maps"
	"slices"

	"github.com/heraldlb/herald/pkg/liveness"
)

// Sightings are what each source says about the other speakers, before they are merged.
type Sightings struct {
	// Memberlist are the members memberlist holds alive (gossip: the slowest to learn of
	// a death, and of a healed partition).
	Memberlist []string
	// Heard are the peers the failure detector heard on a connection of their own within
	// its timeout: alive, whatever memberlist says.
	Heard []string
	// Dead are the peers the failure detector found dead, and how: its connection refused
	// or closed, silent past the timeout, or it said it was leaving.
	Dead map[string]liveness.Reason
	// Self is this speaker: never dead in its own view.
	Self string
}

// View is the membership one plan is computed from: one precedence rule, applied in one
// place (Merge), so that every part of the speaker sees the same members.
type View struct {
	alive []string
	dead  map[string]liveness.Reason
}

// Merge applies the precedence rule, weakest source first: memberlist's alive members;
// then the failure detector, which adds the peers it hears on their own connections
// and removes those it found dead, whatever memberlist says; then leaves (a dead peer
// whose Reason is liveness.Left), which the detector reports like any other death and
// which remove the peer the same way. This speaker is always alive in its own view.
func Merge(s Sightings) View {
	alive := map[string]bool{}
	for _, m := range s.Memberlist {
		alive[m] = true
	}
	for _, m := range s.Heard {
		alive[m] = true
	}
	dead := map[string]liveness.Reason{}
	for m, why := range s.Dead {
		if m == s.Self {
			continue
		}
		dead[m] = why
		delete(alive, m)
	}
	return View{alive: slices.Sorted(maps.Keys(alive)), dead: dead}
}

// Alive returns the live members, sorted: what plan.Input.Members holds.
func (v View) Alive() []string { return slices.Clone(v.alive) }

// Dead returns the members found dead and how each death was learned (a copy). Deaths
// by liveness.Silent are of nodes that went quiet, not of speakers whose port refused.
func (v View) Dead() map[string]liveness.Reason { return maps.Clone(v.dead) }
