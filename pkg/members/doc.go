// Package members tells a speaker which other speakers are alive, through
// hashicorp/memberlist gossip (SWIM), encrypted with a shared key.
//
// Failure detection is tuned for a LAN: a speaker probes a random peer every
// ProbeInterval and suspects it after ProbeTimeout without an answer, direct or
// indirect; a suspect is declared dead after SuspicionMult × log10(N+1) × ProbeInterval
// unless it refutes. The defaults (200 ms, 100 ms, ×2) detect a hard-killed speaker in
// about a second in clusters of 3 to 50 nodes; a gracefully stopped speaker leaves at once.
// Shorter settings detect faster but declare a busy node dead sooner: see docs/layer2.md.
package members
