package speaker

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/heraldlb/herald/pkg/liveness"
)

func TestMerge(t *testing.T) {
	type dead = map[string]liveness.Reason
	for _, tc := range []struct {
		name      string
		in        Sightings
		wantAlive []string
		wantDead  dead
	}{
		{name: "memberlist alone", in: Sightings{Memberlist: []string{"n2", "n1"}, Self: "n1"}, wantAlive: []string{"n1", "n2"}},
		{name: "nobody", in: Sightings{Self: "n1"}},
		{
			name:      "heard on its own connection: alive before memberlist merges",
			in:        Sightings{Memberlist: []string{"n1"}, Heard: []string{"n3"}, Self: "n1"},
			wantAlive: []string{"n1", "n3"},
		},
		{
			name:      "found dead by liveness: gone whatever memberlist says",
			in:        Sightings{Memberlist: []string{"n1", "n2", "n3"}, Dead: dead{"n2": liveness.Closed, "n3": liveness.Silent}, Self: "n1"},
			wantAlive: []string{"n1"}, wantDead: dead{"n2": liveness.Closed, "n3": liveness.Silent},
		},
		{
			name:      "dead outranks heard",
			in:        Sightings{Memberlist: []string{"n1"}, Heard: []string{"n2"}, Dead: dead{"n2": liveness.Silent}, Self: "n1"},
			wantAlive: []string{"n1"}, wantDead: dead{"n2": liveness.Silent},
		},
		{
			name:      "a leave removes the member like a death",
			in:        Sightings{Memberlist: []string{"n1", "n2"}, Heard: []string{"n2"}, Dead: dead{"n2": liveness.Left}, Self: "n1"},
			wantAlive: []string{"n1"}, wantDead: dead{"n2": liveness.Left},
		},
		{
			name:      "self is never dead in its own view",
			in:        Sightings{Memberlist: []string{"n1", "n2"}, Dead: dead{"n1": liveness.Silent}, Self: "n1"},
			wantAlive: []string{"n1", "n2"},
		},
		{
			name:      "dead and not in memberlist any more: still reported dead",
			in:        Sightings{Memberlist: []string{"n1"}, Dead: dead{"n4": liveness.Closed}, Self: "n1"},
			wantAlive: []string{"n1"}, wantDead: dead{"n4": liveness.Closed},
		},
		{
			name:      "duplicates collapse",
			in:        Sightings{Memberlist: []string{"n2", "n1", "n2"}, Heard: []string{"n1", "n2"}, Self: "n1"},
			wantAlive: []string{"n1", "n2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Merge(tc.in)
			if diff := cmp.Diff(tc.wantAlive, v.Alive(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Alive (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantDead, v.Dead(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Dead (-want +got):\n%s", diff)
			}
		})
	}
	// The view is a value: changing what it returned changes nothing in it.
	v := Merge(Sightings{Memberlist: []string{"n1"}, Dead: map[string]liveness.Reason{"n2": liveness.Silent}, Self: "n1"})
	v.Alive()[0] = "x"
	delete(v.Dead(), "n2")
	if v.Alive()[0] != "n1" || len(v.Dead()) != 1 {
		t.Errorf("the view changed through what it returned: %v %v", v.Alive(), v.Dead())
	}
}
