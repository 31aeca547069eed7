package k8s

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/heraldlb/herald/pkg/plan"
	"github.com/heraldlb/herald/pkg/transport"
)

// PlanNode is a Node as the plan sees it.
func PlanNode(n *corev1.Node) plan.Node {
	pn := plan.Node{Name: n.Name, Labels: n.Labels}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			pn.Ready = c.Status == corev1.ConditionTrue
		}
	}
	_, pn.Excluded = n.Labels[corev1.LabelNodeExcludeBalancers]
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, ok := NodeAddr(a.Address); ok {
			pn.Addresses = append(pn.Addresses, ip)
		}
	}
	return pn
}

// NodeAddr parses a node's InternalIP, keeping only an address another node can send
// to (it becomes a real server, a relay's next hop, a speaker to join or bind): unicast,
// not loopback or unspecified, no zone, so IPv6 link-local only with one, which a Node
// cannot carry; IPv4-mapped as IPv4.
func NodeAddr(s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	ip = ip.Unmap()
	return ip, ip.IsGlobalUnicast() || (ip.Is4() && ip.IsLinkLocalUnicast())
}

// PlanService is a Service with the addresses in its status and its EndpointSlices, as
// the plan sees it. An unusable forwarding annotation means the default here (the
// controller reports it).
func PlanService(svc *corev1.Service, ips []netip.Addr, slices []*discoveryv1.EndpointSlice) plan.Service {
	ps := plan.Service{Key: Key(svc), IPs: ips, Local: svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal}
	fw, _ := ForwardingOf(svc)
	ps.Scheduler, ps.Persistence, ps.SourceRanges = fw.Scheduler, fw.Persistence, fw.SourceRanges
	for _, p := range svc.Spec.Ports {
		proto, ok := transport.Parse(string(p.Protocol))
		if !ok {
			continue // the API server admits no other protocol
		}
		ps.Ports = append(ps.Ports, plan.Port{Name: p.Name, Proto: proto, Port: uint16(p.Port), NodePort: uint16(p.NodePort)})
	}
	ps.EndpointNodes = map[string]bool{}
	for _, es := range slices {
		ports := map[string]uint16{}
		for _, p := range es.Ports {
			if p.Port != nil {
				ports[ptr.Deref(p.Name, "")] = uint16(*p.Port)
			}
		}
		for _, ep := range es.Endpoints {
			// Ready (unset means ready), or terminating and still serving: kube-proxy
			// sends a node's Local traffic to those when the node has no ready one.
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			draining := !ready && ptr.Deref(ep.Conditions.Serving, false) && ptr.Deref(ep.Conditions.Terminating, false)
			if !ready && !draining {
				continue
			}
			node := ptr.Deref(ep.NodeName, "")
			if node != "" && ready {
				ps.EndpointNodes[node] = true
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					ps.Endpoints = append(ps.Endpoints, plan.Endpoint{Addr: ip, Node: node, Ports: ports, Terminating: draining})
				}
			}
		}
	}
	return ps
}
