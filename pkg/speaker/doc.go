// Package speaker is the per-node loop: it watches Services, EndpointSlices, Nodes, the
// configuration in force (the ConfigMap the controller publishes) and the live speakers,
// and on any change computes the whole desired state with pkg/plan and hands it to the
// adapters: forwarding first, then layer 2, then BGP.
//
// Changes of any number coalesce into one sync (pkg/runner), so a membership change with
// a thousand Services is one computation, not a thousand work items; a sync that fails is
// retried in full with exponential backoff, and everything is compared with the world in
// full every resync period. The sync reads only informer caches (which keep only what the
// plan reads): when the API server goes away the speaker keeps announcing what it has,
// and resumes following changes when the API server returns. A speaker that has not yet
// joined the others announces nothing for a bounded time, and every owner announces
// again what it keeps after each membership change.
package speaker
