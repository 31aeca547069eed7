// Package apiconn keeps a client's connections to the API server honest, so that a
// watch cannot go quiet for half a minute while the cluster changes.
//
// A connection can die without either end being told: when a link is set down or an
// address deleted, the kernel drops the NAT state of the connections masqueraded out of
// it (kube-proxy masquerades a host-network pod's traffic to the kubernetes Service),
// the API server's next segment draws a reset, and the client learns nothing until it
// sends. client-go then notices only through HTTP/2's health check, after 30 s of
// silence and a 15 s ping, and a speaker plans from a stale view for that long: two
// nodes answer for an address, or none. So Conns tracks the connections, LinkWatch
// replaces those such an event broke as soon as the API server is reachable again, and
// HealthCheck shortens the HTTP/2 health check for every other way a connection can die
// quietly. A link that only loses its carrier keeps the NAT
// state: its connections resume by themselves.
package apiconn
