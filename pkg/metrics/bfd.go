package metrics

import "github.com/prometheus/client_golang/prometheus"

// BFD is the BFD sessions' metrics.
type BFD struct {
	// Up is 1 while the session to peer is Up, 0 otherwise.
	Up *prometheus.GaugeVec
	// Changes counts state changes by peer and the state entered.
	Changes *prometheus.CounterVec
	// Dropped counts received packets dropped, by reason: malformed, unsupported, ttl
	// (below the session's minimum), no_ttl (the kernel did not report it: it cannot be
	// checked), no_session.
	Dropped *prometheus.CounterVec
}

// NewBFD registers the BFD metrics with reg.
func NewBFD(reg prometheus.Registerer) *BFD {
	m := &BFD{
		Up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_bfd_session_up",
			Help: "1 while the BFD session to the peer is Up, 0 otherwise.",
		}, []string{"peer"}),
		Changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bfd_session_changes_total",
			Help: "BFD session state changes, by peer and the state entered.",
		}, []string{"peer", "state"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bfd_dropped_packets_total",
			Help: "Received BFD packets dropped, by reason: malformed, unsupported, ttl, no_ttl, no_session.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.Up, m.Changes, m.Dropped)
	return m
}
