package metrics

import "github.com/prometheus/client_golang/prometheus"

// Speaker is the speaker loop's metrics.
type Speaker struct {
	SyncSeconds      prometheus.Histogram // one computation of the desired state
	OwnershipChanges prometheus.Counter   // Service addresses started or stopped being announced
	Members          prometheus.Gauge     // live speakers seen, this one included
	// Addresses is how many Service addresses the last plan decided on: the speaker's
	// view of the cluster, the same on every speaker whose view is current.
	Addresses   prometheus.Gauge
	ConfigStale prometheus.Gauge // 1 while the newest configuration does not parse
	// CanForward is 1 when this node's kernel can do IPVS, so that the node may announce
	// addresses of pools that forward.
	CanForward prometheus.Gauge
	// PartFailing is 1, by part (plan, layer2, forwarding, bgp, relay, status), while that
	// part's last attempt to apply the plan failed; each part retries on its own.
	PartFailing *prometheus.GaugeVec
	// Relayed is how many source-port ranges of Local Services this node hands on to
	// other nodes (relay-local).
	Relayed prometheus.Gauge
	// RelayLeftOut is how many planned ranges this node keeps because its kernel cannot
	// relay them as things are (the speaker logs why).
	RelayLeftOut prometheus.Gauge
	*InForce
}

// NewSpeaker registers the speaker loop's metrics with reg.
func NewSpeaker(reg prometheus.Registerer) *Speaker {
	m := &Speaker{
		SyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_speaker_sync_duration_seconds",
			Help:    "Time to compute the desired state once (each part applies it on its own).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		OwnershipChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_speaker_ownership_changes_total",
			Help: "Service addresses this node started or stopped announcing.",
		}),
		Members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_members",
			Help: "Live speakers this node sees (memberlist), itself included.",
		}),
		Addresses: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_service_addresses",
			Help: "Addresses of LoadBalancer Services (one per Service and address) in this speaker's last plan: a speaker that shows another number than the others plans from a stale view of the cluster.",
		}),
		ConfigStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_config_stale",
			Help: "1 while the configuration the controller published as in force does not parse and the last good one stays.",
		}),
		CanForward: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_can_forward",
			Help: "1 when this node's kernel can do IPVS; 0 makes the node ineligible for pools that forward.",
		}),
		PartFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_speaker_part_failing",
			Help: "1 while this part of the speaker (layer2, forwarding, bgp, relay, status) fails to apply the plan; the other parts go on.",
		}, []string{"part"}),
		Relayed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_relayed_ranges",
			Help: "Source-port ranges of externalTrafficPolicy Local Services this node hands on to other nodes (relay-local).",
		}),
		RelayLeftOut: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_speaker_relay_left_out_ranges",
			Help: "Planned relay-local source-port ranges this node keeps because its kernel cannot relay them as things are (a bound reached, a node no link reaches, kube-proxy in IPVS mode, forwarding off); the speaker logs why.",
		}),
	}
	reg.MustRegister(m.SyncSeconds, m.OwnershipChanges, m.Members, m.Addresses, m.ConfigStale, m.CanForward, m.PartFailing, m.Relayed, m.RelayLeftOut)
	m.InForce = newInForce(reg)
	return m
}
