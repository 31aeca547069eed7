// Package bgp is what the speaker asks of BGP (RFC 4271): sessions with the configured
// routers that select this node, and one route per announced address (or aggregate),
// with the advertisement's LOCAL_PREF, communities (RFC 1997) and large communities
// (RFC 8092). Both are handed over as whole desired sets; the implementation in
// pkg/bgp/gobgp does the minimum of adds and withdrawals.
package bgp
