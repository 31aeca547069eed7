// Package ipvs programs the kernel beneath the addresses a node announces from pools that
// forward: each address bound to the dummy link herald0 (so IPVS takes traffic for it as
// local), an IPVS virtual service per address, port and protocol with its real servers,
// scheduler and persistence, and Herald's nftables tables (an arp table that silences the
// kernel's own ARP answers for the addresses; an inet table that drops sources outside a
// Service's loadBalancerSourceRanges before IPVS sees them and masquerades traffic of
// Cluster Services towards the real servers).
//
// Forwarder.Set takes the whole desired set (pkg/forward's vocabulary) and makes the
// fewest changes; it only ever touches virtual services and addresses that lie in
// Herald's pools or sit on herald0 (kube-proxy's IPVS services are left alone), the first
// Set and every Set after Resync compare with the kernel in full and put back what someone
// else deleted, and with nothing to forward it writes nothing at all. It drives the kernel
// through the Kernel interface: Linux is the real one, and forwardtest.Kernel a stateful
// fake, so the same test table runs on any machine and in the ip_vs VM. A Set hands the
// kernel all its IPVS changes at once (Kernel.Apply): Linux speaks the IPVS
// generic-netlink family itself and sends them, and herald0's addresses over rtnetlink,
// many requests to a system call (moby/ipvs, one round trip per change, remains the tests'
// independent reader); nftables goes through google/nftables. Probe says, without
// changing anything, whether this kernel can forward.
package ipvs
