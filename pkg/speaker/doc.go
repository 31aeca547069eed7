// Package speaker is the per-node loop: it watches Services, EndpointSlices, Nodes, the
// configuration in force (the ConfigMap the controller publishes) and the live speakers,
// and on any change computes the whole desired state with pkg/plan and hands it to the
// adapters.
//
// It is built of bulkheads, so that no part's I/O, error or backoff delays another's:
//
//   - plan.go: the planner. Changes of any number coalesce into one computation
//     (pkg/runner), pure and cheap, from the informer caches and one membership view
//     (membership.go: Merge, the one precedence rule). The result is published as an
//     immutable snapshot, and every part is poked.
//   - layer2.go, forward.go, bgp.go, relay.go, report.go: the parts — layer 2,
//     forwarding, BGP, relay-local, and status (log lines, metrics, Events). Each has a runner of its own, takes the
//     newest snapshot when it syncs, retries in full with its own exponential backoff
//     when it fails, and compares with the world in full every resync period. No lock
//     is held across a part's I/O by anything another part needs.
//
// So a membership change reaches Layer2.Set one computation after it is known, with no
// I/O of any other part in between, whatever BGP, IPVS or the API server are doing.
//
// The one order kept between parts is forwarding before layer 2: an address should be
// ready to take traffic before this node draws it with a gratuitous ARP (a SYN dropped
// meanwhile costs the client a one-second retransmission). It is kept where it is
// cheap and given up where it would block: when a plan changes the forwarding state,
// layer 2 waits for the forwarder to have tried that plan, but at most ForwardWait
// (250 ms by default), and not at all while the forwarder's last try failed. A hung or
// failing forwarder thus delays an announcement by at most ForwardWait once, never by
// its backoff; BGP has no order with layer 2 at all. The relay (relay-local) is held to
// the same rule, within the same bound: a flow another node serves should not reach this
// node's own endpoint mid-way because the relay was not in place yet.
//
// The sync reads only informer caches (which keep only what the plan reads): when the
// API server goes away the speaker keeps announcing what it has, and resumes following
// changes when the API server returns. A speaker that has not yet joined the others
// announces nothing for a bounded time, and every owner announces again what it keeps
// after each membership change.
package speaker
