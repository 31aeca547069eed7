// Package forward programs the kernel beneath announced addresses: each address bound to
// the dummy link herald0 (so IPVS takes traffic for it as local), and an IPVS virtual
// service per address, port and protocol, with its real servers, scheduler and
// persistence.
//
// Set takes the whole desired set and makes the minimum of changes; it only ever touches
// virtual services and addresses that lie in Herald's pools (kube-proxy's own IPVS
// services are left alone), and the first Set removes what an earlier run left behind.
//
// nftables does the rest: an arp table silences the kernel's own ARP answers for the
// addresses; an inet table drops sources outside a service's loadBalancerSourceRanges
// before IPVS sees them, and masquerades traffic of Cluster services towards the real
// servers. Not built yet: the speaker's use of this package.
package ipvs
