package inspect

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func said(node, reason, ip string, at time.Time, rv string) corev1.Event {
	msg := "node " + node + " announces " + ip + " (layer2)"
	if reason == "StoppedAnnouncing" {
		msg = "node " + node + " no longer announces " + ip
	}
	return corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{ResourceVersion: rv},
		InvolvedObject: corev1.ObjectReference{Namespace: "default", Name: "web"},
		Source:         corev1.EventSource{Component: "herald-speaker"},
		Reason:         reason, Message: msg, LastTimestamp: metav1.NewTime(at),
	}
}

func TestPublished(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)
	s := &Snapshot{Events: []corev1.Event{
		said("node2", "Announcing", "192.168.10.90", t0, "10"),
		// node2 crashed; node3 took over within the same second: the resource version orders them.
		said("node3", "Announcing", "192.168.10.90", t0, "12"),
		said("node1", "Announcing", "198.51.100.1", t0, "20"),
		said("node2", "Announcing", "198.51.100.1", t0, "21"),
		said("node1", "StoppedAnnouncing", "198.51.100.1", t0.Add(time.Second), "30"),
		{Source: corev1.EventSource{Component: "herald-controller"}, Reason: "Announcing", Message: "node x announces 1.2.3.4 (bgp)"},
	}}
	want := map[string][]string{
		"default/web 192.168.10.90": {"node3", "node2"}, // newest first
		"default/web 198.51.100.1":  {"node2"},
	}
	if diff := cmp.Diff(want, s.published()); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
}

func TestSessions(t *testing.T) {
	page := `# HELP herald_bgp_session_up 1 while the BGP session with the peer is Established, else 0.
# TYPE herald_bgp_session_up gauge
herald_bgp_session_up{peer="192.168.10.1"} 1
herald_bgp_session_up{peer="fd10::1"} 0
herald_bfd_session_up{peer="192.168.10.1"} 0
herald_config_in_force_info{hash="abc"} 1
`
	got := Sessions(page)
	want := []SessionRow{{Peer: "192.168.10.1", Established: true, BFD: "down"}, {Peer: "fd10::1"}}
	if !slices.Equal(got, want) {
		t.Fatalf("Sessions = %+v, want %+v", got, want)
	}
}
