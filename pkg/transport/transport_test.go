package transport

import "testing"

func TestParseRoundTrip(t *testing.T) {
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		got, ok := Parse(p.String())
		if !ok || got != p {
			t.Errorf("Parse(%q) = %v, %v; want %v", p.String(), got, ok, p)
		}
	}
	if p, ok := Parse(""); !ok || p != TCP {
		t.Errorf(`Parse("") = %v, %v; want TCP, Kubernetes' default`, p, ok)
	}
	if _, ok := Parse("ICMP"); ok {
		t.Error(`Parse("ICMP") succeeded`)
	}
}
