package metrics

import (
	"math/big"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/pkg/ipam"
)

// Controller is the IP controller's metrics.
type Controller struct {
	// Allocations counts allocation outcomes by result: "assigned", or why not.
	Allocations *prometheus.CounterVec
	// ConfigLoads counts ConfigMap versions seen, by result: accepted, invalid, refused.
	ConfigLoads *prometheus.CounterVec
	// ConfigStale is 1 while the newest ConfigMap is refused and an older one is in force.
	ConfigStale prometheus.Gauge
	// ConfigLastSuccess is when a configuration was last accepted (Unix seconds).
	ConfigLastSuccess prometheus.Gauge
	*InForce
}

// NewController registers the controller's metrics with reg. pools is called at every
// scrape for the fill of each pool, so the gauges never lag or keep removed pools.
func NewController(reg prometheus.Registerer, pools func() []ipam.PoolStats) *Controller {
	m := &Controller{
		Allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_controller_allocations_total",
			Help: "Address allocation outcomes, by result: assigned, or the reason it failed.",
		}, []string{"result"}),
		ConfigLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_config_loads_total",
			Help: "Configuration versions read, by result: accepted, invalid (does not parse), refused (would take addresses in use).",
		}, []string{"result"}),
		ConfigStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_config_stale",
			Help: "1 while the newest configuration is refused and the last good one stays in force.",
		}),
		ConfigLastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_config_last_success_timestamp_seconds",
			Help: "When a configuration was last accepted.",
		}),
	}
	reg.MustRegister(m.Allocations, m.ConfigLoads, m.ConfigStale, m.ConfigLastSuccess, poolCollector(pools))
	m.InForce = newInForce(reg)
	return m
}

var (
	poolCapacity = prometheus.NewDesc("herald_pool_capacity_addresses",
		"Addresses a pool can hand out, by pool and family.", []string{"pool", "family"}, nil)
	poolInUse = prometheus.NewDesc("herald_pool_in_use_addresses",
		"Addresses of a pool held by Services, by pool and family.", []string{"pool", "family"}, nil)
)

type poolCollector func() []ipam.PoolStats

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolCapacity
	ch <- poolInUse
}

func (f poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range f() {
		capacity, _ := new(big.Float).SetInt(s.Capacity).Float64()
		fam := s.Family.String()
		ch <- prometheus.MustNewConstMetric(poolCapacity, prometheus.GaugeValue, capacity, s.Pool, fam)
		ch <- prometheus.MustNewConstMetric(poolInUse, prometheus.GaugeValue, float64(s.InUse), s.Pool, fam)
	}
}
