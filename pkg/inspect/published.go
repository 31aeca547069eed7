package inspect

import (
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// published returns, for each "service ip", the nodes whose speakers last said they
// announce it (Events Announcing / StoppedAnnouncing, recorded on change only). Events
// expire (an hour by default), so an address may have no published announcer.
func (s *Snapshot) published() map[string][]string {
	type said struct {
		announcing bool
		at         corev1.Event
	}
	latest := map[string]map[string]said{} // "service ip" -> node -> what it said last
	for _, e := range s.Events {
		if e.Source.Component != "herald-speaker" {
			continue
		}
		var node, ip string
		var announcing bool
		switch e.Reason {
		case "Announcing":
			var mode string
			if n, _ := fmt.Sscanf(e.Message, "node %s announces %s (%s)", &node, &ip, &mode); n < 2 {
				continue
			}
			announcing = true
		case "StoppedAnnouncing":
			if n, _ := fmt.Sscanf(e.Message, "node %s no longer announces %s", &node, &ip); n < 2 {
				continue
			}
		default:
			continue
		}
		key := e.InvolvedObject.Namespace + "/" + e.InvolvedObject.Name + " " + ip
		if latest[key] == nil {
			latest[key] = map[string]said{}
		}
		if prev, ok := latest[key][node]; !ok || newer(e, prev.at) {
			latest[key][node] = said{announcing, e}
		}
	}
	out := map[string][]string{}
	for key, byNode := range latest {
		for node, sd := range byNode {
			if sd.announcing {
				out[key] = append(out[key], node)
			}
		}
		slices.Sort(out[key])
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
