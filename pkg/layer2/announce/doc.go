// Package announce makes the network deliver owned addresses to this node: it answers ARP
// requests (RFC 826) and IPv6 Neighbor Solicitations (RFC 4861) for the addresses the
// node owns, and only those, and announces a newly owned address with a short burst of
// gratuitous ARP and unsolicited Neighbor Advertisements with the override flag set, so
// that neighbours move their cache entry to this node at once.
//
// Gratuitous ARP is sent in both of the forms Linux accepts as an update of a fresh
// neighbour entry: a request whose sender and target address are the owned address, and
// a reply whose target hardware address is the sender's.
//
// An address is answered on the interfaces where its subnet is directly connected, or
// on the interfaces its pool names; never on loopback or on a port enslaved to a bridge.
// Interfaces that appear or disappear are picked up. Malformed and foreign packets are
// dropped and counted, and so are Neighbor Solicitations and Advertisements whose hop
// limit is not 255 (RFC 4861 7.1). The NDP socket names its interface by index, never by
// name as an IPv6 zone (Go's cache of zone names may hold an old index for a minute
// after an interface is re-created under the same name).
//
// A packet of another hardware address that claims an owned address (a gratuitous ARP,
// an ARP reply or an advertisement for it, a request or solicitation sent from it) is a
// conflict: another node believes, or briefly believed, it owns the address, and the
// neighbours that heard it now send there. The owner announces the address again at
// once, at most once per ConflictInterval per address (the claims within the interval
// answered once at its end, so the last word is the owner's), logs the conflict once
// with the other hardware address, and counts every claim. Advertisements go out as Linux sends them, from the target address
// itself (tools such as ndisc6 accept nothing else), as whole frames on the link's packet
// socket. Run returns once every socket is closed and every goroutine it started ended.
package announce
