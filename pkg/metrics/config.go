package metrics

import "github.com/prometheus/client_golang/prometheus"

// InForce says which configuration a component runs: herald_config_in_force_info with
// the configuration's hash as a label, 1 for the one in force and nothing for others.
// The controller and every speaker export it, so that anyone can see when they disagree.
type InForce struct{ vec *prometheus.GaugeVec }

func newInForce(reg prometheus.Registerer) *InForce {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_config_in_force_info",
		Help: "1 for the configuration this component runs, by its hash (the first 12 hex digits of the SHA-256 of its text).",
	}, []string{"hash"})
	reg.MustRegister(v)
	return &InForce{vec: v}
}

// Set records hash as the configuration in force.
func (m *InForce) Set(hash string) {
	m.vec.Reset()
	m.vec.WithLabelValues(hash).Set(1)
}
