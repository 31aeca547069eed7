package k8s

import (
	"fmt"
	"net/netip"
	"strings"
)

// Reasons of the Events Herald records: the one place that names them, for the
// components that write them and the plugin that reads them.
const (
	// On Services, from the controller.
	ReasonIPAllocated       = "IPAllocated"
	ReasonIPReleased        = "IPReleased"
	ReasonPoolExhausted     = "PoolExhausted"
	ReasonIPUnavailable     = "IPUnavailable"
	ReasonSharingConflict   = "SharingConflict"
	ReasonUnknownPool       = "UnknownPool"
	ReasonInvalidRequest    = "InvalidRequest"
	ReasonNoConfiguration   = "NoConfiguration"
	ReasonInvalidForwarding = "InvalidForwarding"
	// On Services, from the speakers.
	ReasonAnnouncing        = "Announcing"
	ReasonStoppedAnnouncing = "StoppedAnnouncing"
	ReasonNoNodeCanForward  = "NoNodeCanForward"
	// ReasonNoLiveEndpoints: the node that forwards an address refuses its traffic, having
	// no ready endpoint on a live node (or no live node) to send it to.
	ReasonNoLiveEndpoints = "NoLiveEndpoints"
	// On Nodes, from the speakers.
	ReasonIPVSUnavailable = "IPVSUnavailable"
	ReasonBGPSessionUp    = "BGPSessionUp"
	ReasonBGPSessionDown  = "BGPSessionDown"
	ReasonBFDSessionUp    = "BFDSessionUp"
	ReasonBFDSessionDown  = "BFDSessionDown"
	// On the ConfigMap, from the controller.
	ReasonConfigLoaded  = "ConfigLoaded"
	ReasonInvalidConfig = "InvalidConfig"
	ReasonConfigRefused = "ConfigRefused"
)

// Components that record Herald's Events (their EventSource).
const (
	ComponentController = "herald-controller"
	ComponentSpeaker    = "herald-speaker"
)

// Announcement is what a speaker says on a Service when its node starts (Announcing) or
// stops (StoppedAnnouncing) announcing one of its addresses.
type Announcement struct {
	Node       string
	IP         netip.Addr
	Mode       string // layer2 or bgp; empty when stopping
	Announcing bool
}

// Reason is the Event reason that carries a.
func (a Announcement) Reason() string {
	if a.Announcing {
		return ReasonAnnouncing
	}
	return ReasonStoppedAnnouncing
}

// Message is the Event message that carries a; ParseAnnouncement reads it back.
func (a Announcement) Message() string {
	if a.Announcing {
		return fmt.Sprintf("node %s announces %s (%s)", a.Node, a.IP, a.Mode)
	}
	return fmt.Sprintf("node %s no longer announces %s", a.Node, a.IP)
}

// ParseAnnouncement reads an Announcing or StoppedAnnouncing Event back; false for any
// other Event, or a message it cannot read.
func ParseAnnouncement(reason, message string) (Announcement, bool) {
	var a Announcement
	var rest string
	switch reason {
	case ReasonAnnouncing:
		a.Announcing = true
		node, after, ok := strings.Cut(strings.TrimPrefix(message, "node "), " announces ")
		if !ok || !strings.HasPrefix(message, "node ") {
			return a, false
		}
		ip, mode, ok := strings.Cut(after, " (")
		if !ok || !strings.HasSuffix(mode, ")") {
			return a, false
		}
		a.Node, rest, a.Mode = node, ip, strings.TrimSuffix(mode, ")")
	case ReasonStoppedAnnouncing:
		node, ip, ok := strings.Cut(strings.TrimPrefix(message, "node "), " no longer announces ")
		if !ok || !strings.HasPrefix(message, "node ") {
			return a, false
		}
		a.Node, rest = node, ip
	default:
		return a, false
	}
	ip, err := netip.ParseAddr(rest)
	if err != nil || a.Node == "" || strings.Contains(a.Node, " ") {
		return Announcement{}, false
	}
	a.IP = ip
	return a, true
}
