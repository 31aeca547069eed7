// Package e2e runs Herald end to end: nodes are network namespaces on one bridge, each
// running a real speaker process against a real API server (itself in a namespace of its
// own on the bridge), a client namespace resolves Service addresses by ARP and NDP and
// opens TCP connections to them. Nothing is added to the host's own network namespace.
//
// Without ip_vs on this kernel, forwarding is off and each node stands in for kube-proxy
// with the Service address on its loopback (arp_ignore=1, so the kernel itself never
// answers ARP for it) and a small TCP server that replies with the node's name: a
// client's connection proves which node the traffic reached.
package e2e
