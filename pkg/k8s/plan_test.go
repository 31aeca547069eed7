package k8s

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A node's InternalIPs are used as next hops and real servers: only addresses another
// node can send to are kept, an IPv4-mapped one as IPv4.
func TestPlanNodeKeepsUsableAddresses(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	for _, a := range []string{"10.0.0.1", "fd10::11", "::ffff:10.0.0.2", "127.0.0.1", "::1", "0.0.0.0", "::",
		"fe80::1%eth0", "fe80::1", "169.254.1.1", "224.0.0.1", "ff02::1", "255.255.255.255", "not-an-ip"} {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"})
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd10::11"), netip.MustParseAddr("10.0.0.2")}
	if got := PlanNode(n).Addresses; !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
}
