package metrics

import "github.com/prometheus/client_golang/prometheus"

// Layer2 is the layer-2 announcer's metrics.
type Layer2 struct {
	// Answered counts ARP replies and Neighbor Advertisements sent for owned addresses.
	Answered *prometheus.CounterVec // family
	// Gratuitous counts gratuitous ARPs and unsolicited Neighbor Advertisements sent.
	Gratuitous *prometheus.CounterVec // family
	// Dropped counts packets read and not answered, by family and reason: malformed,
	// not_request (an ARP reply, a message other than a solicitation), not_owned,
	// hop_limit (a Neighbor Solicitation or Advertisement whose hop limit is not 255, or
	// unknown: it may come from off the link, RFC 4861 7.1).
	Dropped *prometheus.CounterVec // family, reason
	// Conflicts counts ARP packets and Neighbor Solicitations or Advertisements read in
	// which another hardware address claims an address this node announces; each is
	// answered by announcing the address again (at most once per interval per address).
	Conflicts *prometheus.CounterVec // family
	// Announced is how many addresses this node announces in layer-2 mode.
	Announced prometheus.Gauge
}

// NewLayer2 registers the layer-2 metrics with reg.
func NewLayer2(reg prometheus.Registerer) *Layer2 {
	m := &Layer2{
		Answered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_layer2_answered_total",
			Help: "ARP replies (IPv4) and Neighbor Advertisements (IPv6) sent for addresses this node owns.",
		}, []string{"family"}),
		Gratuitous: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_layer2_gratuitous_sent_total",
			Help: "Gratuitous ARPs and unsolicited Neighbor Advertisements sent on taking an address over.",
		}, []string{"family"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_layer2_dropped_total",
			Help: "ARP and NDP packets read and not answered, by reason: malformed, not_request, not_owned, hop_limit.",
		}, []string{"family", "reason"}),
		Conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_layer2_conflicts_total",
			Help: "ARP and NDP packets read in which another hardware address claims an address this node announces.",
		}, []string{"family"}),
		Announced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_layer2_announced_addresses",
			Help: "Addresses this node answers for in layer-2 mode.",
		}),
	}
	reg.MustRegister(m.Answered, m.Gratuitous, m.Dropped, m.Conflicts, m.Announced)
	return m
}
