package metrics

import "github.com/prometheus/client_golang/prometheus"

// Liveness is the failure detector's metrics.
type Liveness struct {
	// Deaths counts the speakers found dead, by how: connection_closed, heartbeat, leave
	// (and memberlist, counted by the speaker, for deaths only memberlist saw).
	Deaths *prometheus.CounterVec
	// Detection is how long a death took to be known, from the peer's last sign of life.
	Detection prometheus.Histogram
	// Dropped counts the messages and connections refused, by reason: mac, replay,
	// oversize, type, truncated, malformed, stale, handshake, limit, sender.
	Dropped *prometheus.CounterVec
}

// NewLiveness registers the failure detector's metrics with reg.
func NewLiveness(reg prometheus.Registerer) *Liveness {
	m := &Liveness{
		Deaths: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_liveness_deaths_total",
			Help: "Speakers this one found dead, by how it learned it: connection_closed, heartbeat, leave, memberlist.",
		}, []string{"how"}),
		Detection: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_liveness_detection_seconds",
			Help:    "Time from a speaker's last sign of life to this one knowing it dead (crashes and silences, not leaves).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_liveness_dropped_messages_total",
			Help: "Failure-detector frames, memberlist messages and connections refused, by reason: mac, replay, oversize, type, truncated, malformed, stale, handshake, limit, sender.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.Deaths, m.Detection, m.Dropped)
	return m
}

// NewLivenessEnabled registers herald_liveness_enabled: 1 while the failure detector runs,
// 0 when the speaker relies on memberlist alone (no gossip key, or --liveness-port=0).
func NewLivenessEnabled(reg prometheus.Registerer) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "herald_liveness_enabled",
		Help: "1 while the failure detector runs; 0 when memberlist alone detects deaths (no gossip key, or --liveness-port=0).",
	})
	reg.MustRegister(g)
	return g
}
