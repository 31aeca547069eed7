// Package plan computes what one speaker should do, from the same inputs every speaker
// sees: the configuration, the Services' addresses, where their endpoints are ready, the
// nodes, the live speakers and this node's name. The result is the whole desired state,
// handed to the adapters at once, together with the reason for every decision.
//
// The package is pure: no I/O, no clocks, no logging.
package plan
