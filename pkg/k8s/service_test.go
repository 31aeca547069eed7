package k8s

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/pkg/ipam"
	"github.com/heraldlb/herald/pkg/transport"
)

func TestRequest(t *testing.T) {
	single, dual, prefer := corev1.IPFamilyPolicySingleStack, corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicyPreferDualStack
	svc := func(mod func(*corev1.Service)) *corev1.Service {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Annotations: map[string]string{}},
			Spec: corev1.ServiceSpec{
				Type:           corev1.ServiceTypeLoadBalancer,
				IPFamilies:     []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
				IPFamilyPolicy: &single,
				Selector:       map[string]string{"app": "web", "tier": "front"},
				Ports:          []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}, {Port: 53, Protocol: corev1.ProtocolUDP}},
			},
		}
		mod(s)
		return s
	}
	ports := []ipam.Port{{Protocol: transport.TCP, Port: 80}, {Protocol: transport.UDP, Port: 53}}
	tests := []struct {
		name    string
		svc     *corev1.Service
		want    ipam.Request
		wantErr string
	}{
		{"single stack takes the first family", svc(func(*corev1.Service) {}),
			ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4}, Ports: ports}, ""},
		{"dual stack", svc(func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &dual }),
			ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4, ipam.IPv6}, Ports: ports}, ""},
		{"prefer dual stack", svc(func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &prefer }),
			ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4, ipam.IPv6}, Ports: ports}, ""},
		{"herald annotations", svc(func(s *corev1.Service) {
			s.Spec.IPFamilyPolicy = &dual
			s.Annotations["herald.dev/loadBalancerIPs"] = "192.168.10.95, fc00::5"
			s.Annotations["herald.dev/address-pool"] = "gold"
			s.Annotations["herald.dev/allow-shared-ip"] = "key"
		}), ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4, ipam.IPv6}, Pool: "gold", SharingKey: "key",
			IPs: []netip.Addr{netip.MustParseAddr("192.168.10.95"), netip.MustParseAddr("fc00::5")}, Ports: ports}, ""},
		{"metallb annotations", svc(func(s *corev1.Service) {
			s.Annotations["metallb.universe.tf/loadBalancerIPs"] = "192.168.10.95"
			s.Annotations["metallb.universe.tf/address-pool"] = "gold"
			s.Annotations["metallb.universe.tf/allow-shared-ip"] = "key"
		}), ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4}, Pool: "gold", SharingKey: "key",
			IPs: []netip.Addr{netip.MustParseAddr("192.168.10.95")}, Ports: ports}, ""},
		{"both spellings agree", svc(func(s *corev1.Service) {
			s.Annotations["metallb.universe.tf/address-pool"] = "gold"
			s.Annotations["herald.dev/address-pool"] = "gold"
		}), ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4}, Pool: "gold", Ports: ports}, ""},
		{"spec.loadBalancerIP", svc(func(s *corev1.Service) { s.Spec.LoadBalancerIP = "192.168.10.95" }),
			ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4}, IPs: []netip.Addr{netip.MustParseAddr("192.168.10.95")}, Ports: ports}, ""},
		{"local policy keys on the selector", svc(func(s *corev1.Service) {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}), ipam.Request{Service: "ns/web", Families: []ipam.Family{ipam.IPv4}, BackendKey: "app=web,tier=front", Ports: ports}, ""},
		{"spellings disagree", svc(func(s *corev1.Service) {
			s.Annotations["metallb.universe.tf/address-pool"] = "gold"
			s.Annotations["herald.dev/address-pool"] = "silver"
		}), ipam.Request{}, `annotations herald.dev/address-pool="silver" and metallb.universe.tf/address-pool="gold" disagree`},
		{"not an address", svc(func(s *corev1.Service) { s.Annotations["herald.dev/loadBalancerIPs"] = "10.0.0.1,banana" }),
			ipam.Request{}, `herald.dev/loadBalancerIPs: "banana" is not an IP address`},
		{"wrong family", svc(func(s *corev1.Service) { s.Spec.LoadBalancerIP = "fc00::1" }),
			ipam.Request{}, `spec.loadBalancerIP: fc00::1 is IPv6, but the Service's IP families are [IPv4 IPv6]`},
		{"two of a family", svc(func(s *corev1.Service) {
			s.Spec.IPFamilyPolicy = &dual
			s.Annotations["herald.dev/loadBalancerIPs"] = "10.0.0.1,10.0.0.2"
		}), ipam.Request{}, `names more than one IPv4 address`},
		{"spec and annotation disagree", svc(func(s *corev1.Service) {
			s.Spec.LoadBalancerIP = "10.0.0.1"
			s.Annotations["herald.dev/loadBalancerIPs"] = "10.0.0.2"
		}), ipam.Request{}, `spec.loadBalancerIP "10.0.0.1" and annotation herald.dev/loadBalancerIPs "10.0.0.2" disagree`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Request(tt.svc)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("Request (-want +got):\n%s", diff)
			}
		})
	}
}

func TestManages(t *testing.T) {
	other := "example.com/lb"
	ours := DefaultLoadBalancerClass
	for _, tt := range []struct {
		typ   corev1.ServiceType
		class *string
		want  bool
	}{
		{corev1.ServiceTypeLoadBalancer, nil, true},
		{corev1.ServiceTypeLoadBalancer, &ours, true},
		{corev1.ServiceTypeLoadBalancer, &other, false},
		{corev1.ServiceTypeNodePort, nil, false},
	} {
		s := &corev1.Service{Spec: corev1.ServiceSpec{Type: tt.typ, LoadBalancerClass: tt.class}}
		if got := Manages(s, DefaultLoadBalancerClass); got != tt.want {
			t.Errorf("Manages(type %s, class %v) = %v, want %v", tt.typ, tt.class, got, tt.want)
		}
	}
}

func TestIngressEqual(t *testing.T) {
	vip, proxy := corev1.LoadBalancerIPModeVIP, corev1.LoadBalancerIPModeProxy
	written := Ingress([]netip.Addr{netip.MustParseAddr("10.0.0.1")}, false)
	if p := Ingress([]netip.Addr{netip.MustParseAddr("10.0.0.1")}, true); *p[0].IPMode != proxy {
		t.Errorf("forwarded ingress has ipMode %s, want Proxy", *p[0].IPMode)
	}
	if !IngressEqual(written, []corev1.LoadBalancerIngress{{IP: "10.0.0.1"}}) {
		t.Error("an unset ipMode must equal VIP")
	}
	if !IngressEqual(written, []corev1.LoadBalancerIngress{{IP: "10.0.0.1", IPMode: &vip}}) {
		t.Error("the same ingress is not equal")
	}
	if IngressEqual(written, []corev1.LoadBalancerIngress{{IP: "10.0.0.1", IPMode: &proxy}}) {
		t.Error("ipMode Proxy equals VIP")
	}
	if IngressEqual(written, []corev1.LoadBalancerIngress{{IP: "10.0.0.1", Hostname: "x"}}) {
		t.Error("a hostname is ignored")
	}
	if IngressEqual(written, nil) || !IngressEqual(nil, []corev1.LoadBalancerIngress{}) {
		t.Error("empty lists")
	}
}

func TestForwardingOf(t *testing.T) {
	timeout := int32(600)
	tests := []struct {
		name    string
		svc     corev1.Service
		want    Forwarding
		wantErr string // substring; "" for none
	}{
		{"defaults", corev1.Service{}, Forwarding{Scheduler: "rr"}, ""},
		{"scheduler", corev1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationIPVSScheduler: "mh"}}}, Forwarding{Scheduler: "mh"}, ""},
		{"unknown scheduler", corev1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationIPVSScheduler: "fastest"}}},
			Forwarding{Scheduler: "rr"}, `herald.dev/ipvs-scheduler="fastest"`},
		{"affinity default timeout", corev1.Service{Spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP}},
			Forwarding{Scheduler: "rr", Persistence: 3 * time.Hour}, ""},
		{"affinity timeout", corev1.Service{Spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}}},
			Forwarding{Scheduler: "rr", Persistence: 10 * time.Minute}, ""},
		{"source ranges", corev1.Service{Spec: corev1.ServiceSpec{LoadBalancerSourceRanges: []string{"10.1.2.3/16", " fd00::/64", "10.0.0.0/33"}}},
			Forwarding{Scheduler: "rr", SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00::/64")}},
			`spec.loadBalancerSourceRanges[2]="10.0.0.0/33"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ForwardingOf(&tt.svc)
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("error %v, want one saying %q", err, tt.wantErr)
			}
			if got.Scheduler != tt.want.Scheduler || got.Persistence != tt.want.Persistence || !slices.Equal(got.SourceRanges, tt.want.SourceRanges) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
