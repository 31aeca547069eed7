package metrics

import "github.com/prometheus/client_golang/prometheus"

// BGP is the BGP speaker's metrics.
type BGP struct {
	// SessionUp is 1 while the session with a peer is Established.
	SessionUp *prometheus.GaugeVec // peer
	// Routes is how many routes this node advertises (to every peer of the family).
	Routes prometheus.Gauge
	// SessionChanges counts session state changes, by peer and new state.
	SessionChanges *prometheus.CounterVec // peer, state
	// Resets counts sessions Herald reset itself, by peer and reason (bfd_down).
	Resets *prometheus.CounterVec // peer, reason
}

// NewBGP registers the BGP metrics with reg.
func NewBGP(reg prometheus.Registerer) *BGP {
	m := &BGP{
		SessionUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_bgp_session_up",
			Help: "1 while the BGP session with the peer is Established, else 0.",
		}, []string{"peer"}),
		Routes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bgp_advertised_routes",
			Help: "Routes this node advertises to its BGP peers.",
		}),
		SessionChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bgp_session_state_changes_total",
			Help: "BGP session state changes, by peer and the state entered.",
		}, []string{"peer", "state"}),
		Resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bgp_session_resets_total",
			Help: "BGP sessions this node reset, by peer and reason (bfd_down: the BFD session beside it went down).",
		}, []string{"peer", "reason"}),
	}
	reg.MustRegister(m.SessionUp, m.Routes, m.SessionChanges, m.Resets)
	return m
}
