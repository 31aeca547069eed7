package metrics

import "github.com/prometheus/client_golang/prometheus"

// Forward is the IPVS forwarder's metrics.
type Forward struct {
	// VirtualServices and RealServers are what Herald has programmed in IPVS.
	VirtualServices prometheus.Gauge
	RealServers     prometheus.Gauge
	// Restored counts state Herald had programmed and found gone on a resync (another
	// program deleted it), by kind: virtual_service, real_server.
	Restored *prometheus.CounterVec
	// Errors counts failed applications of the desired state (retried on the next sync).
	Errors prometheus.Counter
	// ApplySeconds is the time one Set takes.
	ApplySeconds prometheus.Histogram
}

// NewForward registers the forwarder's metrics with reg.
func NewForward(reg prometheus.Registerer) *Forward {
	m := &Forward{
		VirtualServices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_forward_virtual_services",
			Help: "IPVS virtual services Herald has programmed on this node.",
		}),
		RealServers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_forward_real_servers",
			Help: "IPVS real servers behind Herald's virtual services on this node.",
		}),
		Restored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_forward_restored_total",
			Help: "IPVS state Herald had programmed and found deleted by someone else (e.g. kube-proxy in IPVS mode), then restored; by kind.",
		}, []string{"kind"}),
		Errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_forward_errors_total",
			Help: "Failed applications of the forwarding state; each is retried in full on the next sync.",
		}),
		ApplySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_forward_apply_duration_seconds",
			Help:    "Time to bring IPVS, herald0 and the nftables tables in line with the desired state once.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
	}
	for _, k := range []string{"virtual_service", "real_server"} {
		m.Restored.WithLabelValues(k)
	}
	reg.MustRegister(m.VirtualServices, m.RealServers, m.Restored, m.Errors, m.ApplySeconds)
	return m
}
