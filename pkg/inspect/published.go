package inspect

import (
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/heraldlb/herald/pkg/k8s"
)

// published returns, for each "service ip", the nodes whose speakers last said they
// announce it (Events Announcing / StoppedAnnouncing, recorded on change only), the most
// recent claim first. Events expire (an hour by default), so an address may have no
// published announcer; a speaker that crashed never withdraws its claim, so in layer 2
// only the newest claim stands.
func (s *Snapshot) published() map[string][]string {
	type said struct {
		announcing bool
		at         corev1.Event
	}
	latest := map[string]map[string]said{} // "service ip" -> node -> what it said last
	for _, e := range s.Events {
		if e.Source.Component != k8s.ComponentSpeaker {
			continue
		}
		a, ok := k8s.ParseAnnouncement(e.Reason, e.Message)
		if !ok {
			continue
		}
		node, ip, announcing := a.Node, a.IP.String(), a.Announcing
		key := e.InvolvedObject.Namespace + "/" + e.InvolvedObject.Name + " " + ip
		if latest[key] == nil {
			latest[key] = map[string]said{}
		}
		if prev, ok := latest[key][node]; !ok || newer(e, prev.at) {
			latest[key][node] = said{announcing, e}
		}
	}
	out := map[string][]string{}
	type claim struct {
		node string
		at   corev1.Event
	}
	for key, byNode := range latest {
		var claims []claim
		for node, sd := range byNode {
			if sd.announcing {
				claims = append(claims, claim{node, sd.at})
			}
		}
		slices.SortFunc(claims, func(a, b claim) int {
			switch {
			case newer(a.at, b.at):
				return -1
			case newer(b.at, a.at):
				return 1
			}
			return strings.Compare(a.node, b.node)
		})
		for _, c := range claims {
			out[key] = append(out[key], c.node)
		}
	}
	return out
}

// newer orders Events by their last time, then (within the same second) by resource
// version, which grows with every write.
func newer(a, b corev1.Event) bool {
	if !a.LastTimestamp.Equal(&b.LastTimestamp) {
		return a.LastTimestamp.After(b.LastTimestamp.Time)
	}
	ra, _ := strconv.ParseUint(a.ResourceVersion, 10, 64)
	rb, _ := strconv.ParseUint(b.ResourceVersion, 10, 64)
	return ra > rb
}
