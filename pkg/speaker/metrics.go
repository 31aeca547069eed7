package speaker

import "github.com/prometheus/client_golang/prometheus"

type speakerMetrics struct {
	syncSeconds      prometheus.Histogram
	ownershipChanges prometheus.Counter
	members          prometheus.Gauge
	configStale      prometheus.Gauge
}

func newSpeakerMetrics(reg prometheus.Registerer) *speakerMetrics {
	m := &speakerMetrics{
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_speaker_sync_duration_seconds",
			Help:    "Time to compute and apply the desired state once.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		ownershipChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_speaker_ownership_changes_total",
			Help: "Service addresses this node started or stopped announcing.",
		}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_members",
			Help: "Live speakers this node sees (memberlist), itself included.",
		}),
		configStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_config_stale",
			Help: "1 while the newest configuration does not parse and the last good one stays in force.",
		}),
	}
	reg.MustRegister(m.syncSeconds, m.ownershipChanges, m.members, m.configStale)
	return m
}
