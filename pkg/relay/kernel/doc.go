// Package kernel programs the kernel of the node that announces an address so that it
// relays the flows pkg/relay's routes name to other nodes, unrewritten:
//
//   - nftables, table inet herald-relay: in prerouting at raw priority (before conntrack),
//     a relayed flow's packets are left untracked, which also keeps them away from this
//     node's own kube-proxy DNAT (nat chains see tracked packets only). One rule per
//     family looks the packet up in a set of the relayed addresses (so other traffic
//     costs one hash lookup), then in a set of address . protocol . port . source-port
//     range, one element per route. In output, ICMP and ICMPv6 redirects about a relayed
//     address are dropped: the node forwards out of the link the packet came in on, and a
//     redirect would teach an on-link client to send all its flows to one node.
//   - policy routing: one rule per route at Options.Priority (to VIP, protocol, port,
//     source-port range, lookup table), and one routing table per node relayed to in
//     Options.FirstTable onwards, holding one default route via that node's address.
//
// The next node receives the packet with the Service's address as its destination;
// kube-proxy there delivers it to its own endpoints, and the reply leaves from there to
// the client. Set reads the kernel's rules and tables each time and changes only what
// differs, in an order that never leaves a flow untracked without its route: routes and
// rules first, then nftables (one transaction), then stale rules and tables. It touches
// only rules at its priority that point into its tables, its tables, and its nftables
// table.
package kernel
