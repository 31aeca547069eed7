// Package transport names the transport protocols of Service ports, as one small typed
// value shared by the allocator, the plan and the forwarder. It is pure.
package transport

import "fmt"

// Protocol is a transport protocol. Its value is the IANA protocol number, which is also
// what the kernel (IPVS, nftables) calls it.
type Protocol uint8

// The protocols a Service port may use.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Parse reads a protocol as Kubernetes writes it ("TCP", "UDP", "SCTP"); the empty
// string is TCP, Kubernetes' default.
func Parse(s string) (Protocol, bool) {
	switch s {
	case "", "TCP":
		return TCP, true
	case "UDP":
		return UDP, true
	case "SCTP":
		return SCTP, true
	}
	return 0, false
}
