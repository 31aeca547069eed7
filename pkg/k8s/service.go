package k8s

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/ipam"
	"github.com/heraldlb/herald/pkg/transport"
)

// DefaultLoadBalancerClass is the spec.loadBalancerClass Herald answers to (besides none).
const DefaultLoadBalancerClass = "herald.dev/lb"

// Annotations a Service may carry. Each is also read under the MetalLB prefix
// (metallb.universe.tf/), so Services written for MetalLB 0.12 work unchanged.
const (
	AnnotationLoadBalancerIPs = "herald.dev/loadBalancerIPs" // comma-separated, one per family
	AnnotationAddressPool     = "herald.dev/address-pool"
	AnnotationAllowSharedIP   = "herald.dev/allow-shared-ip"
	// AnnotationIPVSScheduler picks the IPVS scheduler where Herald forwards (no MetalLB
	// spelling: MetalLB did not forward).
	AnnotationIPVSScheduler = "herald.dev/ipvs-scheduler"
)

const heraldPrefix, metallbPrefix = "herald.dev/", "metallb.universe.tf/"

// Manages reports whether a Service of this type and class is Herald's to serve: type
// LoadBalancer, with no loadBalancerClass or with class.
func Manages(svc *corev1.Service, class string) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer && ClassIsOurs(svc, class)
}

// ClassIsOurs reports whether the Service's loadBalancerClass leaves it to Herald. A
// Service of another class is never touched, whatever its type.
func ClassIsOurs(svc *corev1.Service, class string) bool {
	return svc.Spec.LoadBalancerClass == nil || *svc.Spec.LoadBalancerClass == class
}

// Key is the Service's identity in Herald: "namespace/name".
func Key(svc *corev1.Service) string { return svc.Namespace + "/" + svc.Name }

// annotation reads a Herald annotation or its MetalLB spelling. Both present and
// different is an error naming both.
func annotation(svc *corev1.Service, name string) (string, error) {
	suffix := strings.TrimPrefix(name, heraldPrefix)
	h, hok := svc.Annotations[name]
	m, mok := svc.Annotations[metallbPrefix+suffix]
	switch {
	case hok && mok && h != m:
		return "", fmt.Errorf("annotations %s=%q and %s%s=%q disagree", name, h, metallbPrefix, suffix, m)
	case hok:
		return h, nil
	}
	return m, nil
}

// Request turns what a Service asks for into an allocation request. An error names the
// field or annotation and the value that is wrong.
func Request(svc *corev1.Service) (ipam.Request, error) {
	req := ipam.Request{Service: Key(svc)}
	for _, f := range svc.Spec.IPFamilies {
		switch f {
		case corev1.IPv4Protocol:
			req.Families = append(req.Families, ipam.IPv4)
		case corev1.IPv6Protocol:
			req.Families = append(req.Families, ipam.IPv6)
		}
	}
	if len(req.Families) == 0 {
		req.Families = []ipam.Family{ipam.IPv4}
	}
	if svc.Spec.IPFamilyPolicy == nil || *svc.Spec.IPFamilyPolicy == corev1.IPFamilyPolicySingleStack {
		req.Families = req.Families[:1]
	}

	var err error
	if req.Pool, err = annotation(svc, AnnotationAddressPool); err != nil {
		return req, err
	}
	if req.SharingKey, err = annotation(svc, AnnotationAllowSharedIP); err != nil {
		return req, err
	}
	ips, err := annotation(svc, AnnotationLoadBalancerIPs)
	if err != nil {
		return req, err
	}
	field := AnnotationLoadBalancerIPs
	if ips == "" && svc.Spec.LoadBalancerIP != "" {
		ips, field = svc.Spec.LoadBalancerIP, "spec.loadBalancerIP"
	} else if ips != "" && svc.Spec.LoadBalancerIP != "" && ips != svc.Spec.LoadBalancerIP {
		return req, fmt.Errorf("spec.loadBalancerIP %q and annotation %s %q disagree", svc.Spec.LoadBalancerIP, AnnotationLoadBalancerIPs, ips)
	}
	if ips != "" {
		for s := range strings.SplitSeq(ips, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || ip.Zone() != "" || ip.Is4In6() {
				return req, fmt.Errorf("%s: %q is not an IP address", field, strings.TrimSpace(s))
			}
			if !slices.Contains(req.Families, ipam.FamilyOf(ip)) {
				return req, fmt.Errorf("%s: %s is %s, but the Service's IP families are %v", field, ip, ipam.FamilyOf(ip), svc.Spec.IPFamilies)
			}
			if slices.ContainsFunc(req.IPs, func(o netip.Addr) bool { return o.Is4() == ip.Is4() }) {
				return req, fmt.Errorf("%s: %q names more than one %s address", field, ips, ipam.FamilyOf(ip))
			}
			req.IPs = append(req.IPs, ip)
		}
	}

	if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		// Services with Local traffic share an address only when the same pods back them.
		req.BackendKey = labels.SelectorFromSet(svc.Spec.Selector).String()
		if req.BackendKey == "" {
			req.BackendKey = "<no selector>"
		}
	}
	for _, p := range svc.Spec.Ports {
		proto, ok := transport.Parse(string(p.Protocol))
		if !ok {
			return req, fmt.Errorf("spec.ports: protocol %q is not TCP, UDP or SCTP", p.Protocol)
		}
		req.Ports = append(req.Ports, ipam.Port{Protocol: proto, Port: uint16(p.Port)})
	}
	return req, nil
}

// IngressIPs returns the addresses in the Service's status.loadBalancer.ingress.
func IngressIPs(svc *corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if ip, err := netip.ParseAddr(in.IP); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// Ingress is the status.loadBalancer.ingress that publishes ips. The ipMode is always
// spelt out, so that what is written compares equal to what is read back (the API server
// defaults it to VIP): Proxy when Herald forwards the traffic itself, so that kube-proxy
// leaves the address alone; VIP when kube-proxy is to handle traffic addressed to it.
func Ingress(ips []netip.Addr, proxy bool) []corev1.LoadBalancerIngress {
	if len(ips) == 0 {
		return nil
	}
	mode := corev1.LoadBalancerIPModeVIP
	if proxy {
		mode = corev1.LoadBalancerIPModeProxy
	}
	out := make([]corev1.LoadBalancerIngress, len(ips))
	for i, ip := range ips {
		out[i] = corev1.LoadBalancerIngress{IP: ip.String(), IPMode: &mode}
	}
	return out
}

// Forwarding is how a Service asks Herald to forward its traffic.
type Forwarding struct {
	Scheduler    string        // IPVS scheduler, one of forward.Schedulers
	Persistence  time.Duration // ClientIP session affinity timeout; 0 for none
	SourceRanges []netip.Prefix
}

// ForwardingOf reads a Service's scheduler annotation, session affinity and source
// ranges. An unknown scheduler gives the default (rr) and an error naming the annotation
// and the value; an unreadable source range is left out and named in the error.
func ForwardingOf(svc *corev1.Service) (Forwarding, error) {
	f := Forwarding{Scheduler: forward.DefaultScheduler}
	var errs []error
	if s, ok := svc.Annotations[AnnotationIPVSScheduler]; ok {
		if forward.KnownScheduler(s) {
			f.Scheduler = s
		} else {
			errs = append(errs, fmt.Errorf("annotation %s=%q: not an IPVS scheduler Herald offers (%s); using %s",
				AnnotationIPVSScheduler, s, strings.Join(forward.Schedulers, ", "), f.Scheduler))
		}
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		f.Persistence = time.Duration(corev1.DefaultClientIPServiceAffinitySeconds) * time.Second
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			f.Persistence = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	for i, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.loadBalancerSourceRanges[%d]=%q: %w", i, r, err))
			continue
		}
		f.SourceRanges = append(f.SourceRanges, p.Masked())
	}
	return f, errors.Join(errs...)
}

// IngressEqual reports whether two ingress lists publish the same thing; an unset ipMode
// is VIP.
func IngressEqual(a, b []corev1.LoadBalancerIngress) bool {
	mode := func(m *corev1.LoadBalancerIPMode) corev1.LoadBalancerIPMode {
		if m == nil {
			return corev1.LoadBalancerIPModeVIP
		}
		return *m
	}
	return slices.EqualFunc(a, b, func(x, y corev1.LoadBalancerIngress) bool {
		return x.IP == y.IP && x.Hostname == y.Hostname && mode(x.IPMode) == mode(y.IPMode) &&
			slices.EqualFunc(x.Ports, y.Ports, func(p, q corev1.PortStatus) bool {
				return p.Port == q.Port && p.Protocol == q.Protocol && (p.Error == nil) == (q.Error == nil)
			})
	})
}

// Restore records in a every address already in a status of a Service of class, oldest
// Service first, so that where two claim one address the older keeps it. It returns how
// many Services kept their addresses and, by Service, why the others could not. The
// controller does this on start; the plugin does it to foresee what a configuration does.
func Restore(a *ipam.Allocator, svcs []*corev1.Service, class string) (int, map[string]error) {
	svcs = slices.Clone(svcs)
	slices.SortFunc(svcs, func(x, y *corev1.Service) int {
		return cmp.Or(x.CreationTimestamp.Compare(y.CreationTimestamp.Time), cmp.Compare(Key(x), Key(y)))
	})
	restored, lost := 0, map[string]error{}
	for _, svc := range svcs {
		ips := IngressIPs(svc)
		if !Manages(svc, class) || len(ips) == 0 {
			continue
		}
		// An annotation that no longer parses must not cost the Service its address: the
		// sharing terms read before the bad field still apply.
		req, _ := Request(svc)
		if _, err := a.Restore(req, ips); err != nil {
			lost[Key(svc)] = err
			continue
		}
		restored++
	}
	return restored, lost
}
