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
// dropped and counted. Advertisements go out as Linux sends them, from the target address
// itself (tools such as ndisc6 accept nothing else), as whole frames on the link's packet
// socket. Run returns once every socket is closed and every goroutine it started ended.
package announce
