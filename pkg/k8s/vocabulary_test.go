package k8s

import (
	"net/netip"
	"testing"
)

func TestAnnouncementRoundTrip(t *testing.T) {
	for _, a := range []Announcement{
		{Node: "node2", IP: netip.MustParseAddr("192.168.10.90"), Mode: "layer2", Announcing: true},
		{Node: "worker-1.example.com", IP: netip.MustParseAddr("fd10::90"), Mode: "bgp", Announcing: true},
		{Node: "node3", IP: netip.MustParseAddr("198.51.100.1")},
	} {
		got, ok := ParseAnnouncement(a.Reason(), a.Message())
		if !ok || got != a {
			t.Errorf("ParseAnnouncement(%q, %q) = %+v, %v; want %+v", a.Reason(), a.Message(), got, ok, a)
		}
	}
	for _, bad := range [][2]string{
		{ReasonAnnouncing, "node announces"},
		{ReasonAnnouncing, "node n1 announces banana (layer2)"},
		{ReasonStoppedAnnouncing, "n1 no longer announces 10.0.0.1"},
		{ReasonIPAllocated, "node n1 announces 10.0.0.1 (layer2)"},
	} {
		if a, ok := ParseAnnouncement(bad[0], bad[1]); ok {
			t.Errorf("ParseAnnouncement(%q, %q) = %+v, want no announcement", bad[0], bad[1], a)
		}
	}
}

func FuzzParseAnnouncement(f *testing.F) {
	f.Add(ReasonAnnouncing, "node n1 announces 10.0.0.1 (layer2)")
	f.Add(ReasonStoppedAnnouncing, "node n1 no longer announces fd10::1")
	f.Fuzz(func(t *testing.T, reason, msg string) {
		a, ok := ParseAnnouncement(reason, msg)
		if !ok {
			return
		}
		if b, ok := ParseAnnouncement(a.Reason(), a.Message()); !ok || b != a {
			t.Errorf("%+v does not survive a round trip: %+v, %v", a, b, ok)
		}
	})
}
