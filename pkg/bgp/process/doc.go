// Package process runs the speaker's BGP in a process of its own, speaker-bgp, started
// only while this node has BGP peers: GoBGP, its gRPC and protobuf API and the
// configuration parsers it imports are two thirds of what a speaker would otherwise
// link, about 9 MiB of every node's resident memory spent even where only layer 2
// announces. The Client is the speaker's bgp.Speaker; the Server is speaker-bgp's end.
// They speak JSON lines over the BGP process's standard input and output (the whole
// desired peers and routes, its metrics, its session events); its log is the speaker's
// standard error. The BGP process dies with the speaker (a parent-death signal), stops
// cleanly when its input closes (routes withdrawn, sessions closed with a Cease), and is
// started again with backoff when it exits.
package process
