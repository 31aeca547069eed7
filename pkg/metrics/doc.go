// Package metrics holds Herald's Prometheus collectors, each built from an injected
// prometheus.Registerer (no global registry), and the small HTTP server that exposes
// /metrics, /healthz and /readyz.
package metrics
