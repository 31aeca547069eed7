// Package gobgp implements bgp.Speaker with an embedded GoBGP v3 server.
//
// The server does not listen for connections (unless a listen port is given): it dials
// the peers it is handed. Paths are originated with an unspecified next hop, which GoBGP
// replaces with the session's local address, so each router learns this node's address
// on its own network as the next hop. GoBGP's log goes to the same slog handler as the
// rest of the speaker, and session state changes are logged and counted per peer.
package gobgp
