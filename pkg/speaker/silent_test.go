package speaker

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/plan"
)

// A node leaves the data path when its speaker goes silent (a dead or cut-off node), not
// when it crashes or leaves on a node that still runs, and stays out after memberlist
// drops it until it is heard again.
func TestSilentNodes(t *testing.T) {
	s := &Speaker{opts: Options{NodeName: "n1"}}
	type dead = map[string]liveness.Reason
	for _, step := range []struct {
		name  string
		dead  dead
		alive []string
		want  []string
	}{
		{"all well", nil, []string{"n1", "n2", "n3", "n4"}, nil},
		{"n2 silent: cut off or dead", dead{"n2": liveness.Silent}, []string{"n1", "n3", "n4"}, []string{"n2"}},
		{"n3's speaker crashed, n4's left: their nodes still forward", dead{"n2": liveness.Silent, "n3": liveness.Closed, "n4": liveness.Left},
			[]string{"n1"}, []string{"n2"}},
		{"memberlist drops n2 and the detector forgets it: still silent", dead{"n3": liveness.Closed}, []string{"n1", "n4"}, []string{"n2"}},
		{"this node is never silent to itself", dead{"n1": liveness.Silent}, []string{"n1", "n4"}, []string{"n2"}},
		{"n3, crashed before, now silent", dead{"n3": liveness.Silent}, []string{"n1", "n4"}, []string{"n2", "n3"}},
		{"n2 heard again (memberlist merged)", dead{"n3": liveness.Silent}, []string{"n1", "n2", "n4"}, []string{"n3"}},
		{"n3 restarted, refused, gone from memberlist: its node lives", dead{"n3": liveness.Closed}, []string{"n1", "n2", "n4"}, nil},
		{"n5 silent", dead{"n5": liveness.Silent}, []string{"n1", "n2", "n4"}, []string{"n5"}},
		{"n5 deleted from the cluster, memberlist and the detector forgot it: forgotten", nil, []string{"n1", "n2", "n4"}, nil},
	} {
		nodes := []plan.Node{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}, {Name: "n4"}}
		if step.name == "n5 silent" {
			nodes = append(nodes, plan.Node{Name: "n5"})
		}
		got := s.silentNodes(step.dead, step.alive, nodes)
		var names []string
		for n, ok := range got {
			if ok {
				names = append(names, n)
			}
		}
		if diff := cmp.Diff(step.want, names, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
			t.Errorf("%s: silent (-want +got):\n%s", step.name, diff)
		}
		got["n9"] = true // the caller's copy
		if s.plan.silent["n9"] {
			t.Fatalf("%s: silentNodes handed out its own map", step.name)
		}
	}
}
