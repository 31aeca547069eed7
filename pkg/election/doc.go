// Package election decides, from the same inputs on every speaker, which nodes announce a
// Service address: in layer-2 mode exactly one owner, in BGP mode every eligible node.
//
// A node is eligible when its speaker is alive, the node is Ready, it is not labelled
// node.kubernetes.io/exclude-from-external-load-balancers, and, for a Service with
// externalTrafficPolicy Local, it has a ready endpoint of the Service. The layer-2 owner is
// chosen among the eligible by rendezvous (highest-random-weight) hashing of (node,
// address): every speaker with the same view picks the same owner, Services that share an
// address share the owner, and a node that leaves moves only the addresses it owned.
//
// The package is pure: no I/O, no clocks, no logging.
package election
