// Package relay is the vocabulary of relaying Local traffic in layer 2, shared by the plan
// and the kernel adapter (pkg/relay/kernel). It does no I/O.
//
// In layer 2 one node answers for an address, and kube-proxy on that node delivers an
// externalTrafficPolicy Local Service's traffic to that node's own endpoints only. With
// relay-local, the owner hands the flows, unrewritten, to the other nodes with a ready
// endpoint: kube-proxy there delivers them to its own pods, which see the client's
// address and answer the client directly. Flows are split by the client's source port
// into Buckets ranges, each handed to one node by rendezvous hashing (election.Spread), so
// a node joining or leaving moves only its own share of flows; every packet of a flow has
// the same source port, so the whole flow takes one path.
package relay
