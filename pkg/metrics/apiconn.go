package metrics

import "github.com/prometheus/client_golang/prometheus"

// APIConns is the metrics of the speaker's watch over its API connections.
type APIConns struct {
	// Replaced counts the times the connections were replaced after the kernel dropped
	// their NAT state, by why: link_down (a link that is not a dummy and held a global
	// address or a gateway route was set down), address_deleted (a global address of a
	// link that is not a dummy, or the one the connections left from, was deleted).
	Replaced *prometheus.CounterVec
	// Watching is 1 while the links, addresses and routes are watched, 0 while the watch cannot
	// run (the health check alone replaces broken connections then).
	Watching prometheus.Gauge
}

// NewAPIConns registers the API connection watch's metrics with reg.
func NewAPIConns(reg prometheus.Registerer) *APIConns {
	m := &APIConns{
		Replaced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_api_connections_replaced_total",
			Help: "Times the API connections were replaced after the kernel dropped their NAT state, by why: link_down, address_deleted.",
		}, []string{"why"}),
		Watching: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_api_link_watch_up",
			Help: "1 while the speaker watches the node's links, addresses and routes for events that break its API connections; 0 while it cannot (the health check alone replaces them).",
		}),
	}
	reg.MustRegister(m.Replaced, m.Watching)
	return m
}
