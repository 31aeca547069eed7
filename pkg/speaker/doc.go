// Package speaker is the per-node loop: it watches Services, EndpointSlices, Nodes, the
// configuration and the live speakers, and on any change computes the whole desired
// state with pkg/plan and hands it to the adapters.
//
// Events of any number coalesce into one sync (a trigger channel holding at most one
// pending signal), so a membership change with a thousand Services is one computation,
// not a thousand work items. The sync reads only informer caches: when the API server
// goes away the speaker keeps announcing what it has, and resumes following changes when
// the API server returns.
package speaker
