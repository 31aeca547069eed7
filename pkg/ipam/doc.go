// Package ipam hands out Service addresses from the configured pools.
//
// It is pure and deterministic: the same sequence of calls always gives the same
// addresses. Pools are tried in configuration order (only auto-assign ones unless a pool
// is asked for by name), and inside a pool the lowest free address wins. Free space is
// kept as a B-tree of free intervals per pool and family, so an IPv6 /64 is never
// enumerated and one allocation costs O(log n) in the number of addresses in use.
//
// Two Services may hold the same address only when both carry the same non-empty sharing
// key, no (protocol, port) is used twice on it, and, where either has
// externalTrafficPolicy Local, both are Local with the same pod selector (so the same
// nodes have their endpoints). The Allocator enforces this on every path: Assign, Restore
// and configuration changes.
//
// It knows nothing of Kubernetes: Services are identified by an opaque string key.
package ipam
