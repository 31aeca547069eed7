package inspect

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/ipam"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/plan"
	"github.com/heraldlb/herald/pkg/transport"
)

// Snapshot is the cluster as Herald sees it, read once.
type Snapshot struct {
	// Config is the configuration in force: what the controller published, or, before it
	// published any, the admin's ConfigMap; nil when neither gives a valid one.
	Config    *config.Config
	ConfigErr error  // why Config is nil
	InForce   string // the hash of Config's text
	// Proposed is the hash of the admin's ConfigMap when it is not the one in force (the
	// controller refused it, or has not read it yet), and ProposedWhy the controller's
	// last word on it.
	Proposed, ProposedWhy string
	Services              []corev1.Service
	Slices                []discoveryv1.EndpointSlice
	Nodes                 []corev1.Node
	Events                []corev1.Event // Herald's Events on Services
	// NoIPVS are the nodes whose speaker reported that it cannot forward (an
	// IPVSUnavailable Event on the Node); every other node is taken to be able.
	NoIPVS map[string]bool
	// Speakers are the speaker pods, each with the hash of the configuration it runs
	// (read from its metrics through the API server), or why that could not be read.
	Speakers []SpeakerRow
	Class    string
}

// SpeakerRow is one speaker, the configuration it runs and its BGP sessions.
type SpeakerRow struct {
	Pod      string       `json:"pod"`
	Node     string       `json:"node"`
	Config   string       `json:"config,omitempty"` // hash of the configuration in force there
	Sessions []SessionRow `json:"sessions,omitempty"`
	Err      string       `json:"error,omitempty"`
}

// SessionRow is one BGP session of a speaker, and the BFD session beside it if any.
type SessionRow struct {
	Peer        string `json:"peer"`
	Established bool   `json:"established"`
	BFD         string `json:"bfd,omitempty"` // "up" or "down"; empty without BFD
}

// Read takes a snapshot through client.
func Read(ctx context.Context, client kubernetes.Interface, ref k8s.ConfigRef, class string) (*Snapshot, error) {
	ref = ref.WithDefaults()
	s := &Snapshot{Class: cmp.Or(class, k8s.DefaultLoadBalancerClass)}
	admin, adminErr := configText(ctx, client, ref)
	inForce, inForceErr := configText(ctx, client, ref.InForce())
	switch {
	case inForceErr == nil:
		s.Config, s.ConfigErr = config.Parse([]byte(inForce))
		s.InForce = config.Hash([]byte(inForce))
		if adminErr == nil && admin != inForce {
			s.Proposed = config.Hash([]byte(admin))
			s.ProposedWhy = lastConfigWord(ctx, client, ref)
		}
	case adminErr == nil:
		s.Config, s.ConfigErr = config.Parse([]byte(admin))
		s.InForce = config.Hash([]byte(admin))
	default:
		s.ConfigErr = adminErr
	}
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list Services: %w", err)
	}
	s.Services = svcs.Items
	slices.SortFunc(s.Services, func(a, b corev1.Service) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(k8s.Key(&a), k8s.Key(&b)))
	})
	es, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list EndpointSlices: %w", err)
	}
	s.Slices = es.Items
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list Nodes: %w", err)
	}
	s.Nodes = nodes.Items
	evs, err := client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Service"})
	if err != nil {
		return nil, fmt.Errorf("list Events: %w", err)
	}
	for _, e := range evs.Items {
		if strings.HasPrefix(e.Source.Component, "herald-") {
			s.Events = append(s.Events, e)
		}
	}
	nodeEvs, err := client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,reason=IPVSUnavailable"})
	if err != nil {
		return nil, fmt.Errorf("list Events: %w", err)
	}
	s.NoIPVS = map[string]bool{}
	for _, e := range nodeEvs.Items {
		if e.Source.Component == k8s.ComponentSpeaker {
			s.NoIPVS[e.InvolvedObject.Name] = true
		}
	}
	s.Speakers = speakers(ctx, client, ref.Namespace)
	return s, nil
}

// configText reads the configuration text of ref's ConfigMap.
func configText(ctx context.Context, client kubernetes.Interface, ref k8s.ConfigRef) (string, error) {
	cm, err := client.CoreV1().ConfigMaps(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read ConfigMap %s: %w", ref, err)
	}
	text, ok := cm.Data[ref.Key]
	if !ok {
		return "", fmt.Errorf("ConfigMap %s has no key %q", ref, ref.Key)
	}
	return text, nil
}

// lastConfigWord returns the controller's newest Event on the admin's ConfigMap.
func lastConfigWord(ctx context.Context, client kubernetes.Interface, ref k8s.ConfigRef) string {
	evs, err := client.CoreV1().Events(ref.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=ConfigMap,involvedObject.name=" + ref.Name})
	if err != nil {
		return ""
	}
	var last *corev1.Event
	for i := range evs.Items {
		e := &evs.Items[i]
		if e.Source.Component == k8s.ComponentController && (last == nil || newer(*e, *last)) {
			last = e
		}
	}
	if last == nil {
		return "the controller has not read it yet"
	}
	return last.Reason + ": " + last.Message
}

// speakers lists the speaker pods and reads from each, through the API server's proxy,
// the hash of the configuration it runs.
func speakers(ctx context.Context, client kubernetes.Interface, namespace string) []SpeakerRow {
	pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=speaker"})
	if err != nil {
		return nil
	}
	var out []SpeakerRow
	for _, p := range pods.Items {
		row := SpeakerRow{Pod: p.Name, Node: p.Spec.NodeName}
		body, err := client.CoreV1().Pods(namespace).ProxyGet("http", p.Name, "7473", "/metrics", nil).DoRaw(ctx)
		if err != nil {
			row.Err = err.Error()
		} else {
			row.Sessions = Sessions(string(body))
			if row.Config = InForceHash(string(body)); row.Config == "" {
				row.Err = "runs no configuration yet"
			}
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b SpeakerRow) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// InForceHash reads the hash of herald_config_in_force_info from a metrics page.
func InForceHash(metrics string) string {
	const prefix = `herald_config_in_force_info{hash="`
	for line := range strings.SplitSeq(metrics, "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			if hash, _, ok := strings.Cut(rest, `"`); ok && strings.HasSuffix(line, " 1") {
				return hash
			}
		}
	}
	return ""
}

// Sessions reads a speaker's BGP and BFD sessions from its metrics page
// (herald_bgp_session_up and herald_bfd_session_up), sorted by peer.
func Sessions(metrics string) []SessionRow {
	bgpUp, bfdUp := map[string]bool{}, map[string]bool{}
	for line := range strings.SplitSeq(metrics, "\n") {
		for name, m := range map[string]map[string]bool{`herald_bgp_session_up{peer="`: bgpUp, `herald_bfd_session_up{peer="`: bfdUp} {
			if rest, ok := strings.CutPrefix(line, name); ok {
				if peer, val, ok := strings.Cut(rest, `"} `); ok {
					m[peer] = val == "1"
				}
			}
		}
	}
	var out []SessionRow
	for peer, up := range bgpUp {
		row := SessionRow{Peer: peer, Established: up}
		if b, ok := bfdUp[peer]; ok {
			row.BFD = "down"
			if b {
				row.BFD = "up"
			}
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b SessionRow) int { return cmp.Compare(a.Peer, b.Peer) })
	return out
}

// managed returns the Services Herald serves, oldest first.
func (s *Snapshot) managed() []*corev1.Service {
	var out []*corev1.Service
	for i := range s.Services {
		if k8s.Manages(&s.Services[i], s.Class) {
			out = append(out, &s.Services[i])
		}
	}
	return out
}

// restore rebuilds the allocator's state from the Services' statuses, as the controller
// does on start; it returns the Services that could not keep their addresses, and why.
func (s *Snapshot) restore(pools []config.Pool) (*ipam.Allocator, map[string]error) {
	a := ipam.New(pools)
	svcs := make([]*corev1.Service, len(s.Services))
	for i := range s.Services {
		svcs[i] = &s.Services[i]
	}
	_, lost := k8s.Restore(a, svcs, s.Class)
	return a, lost
}

// PoolRow is how full one family of one pool is.
type PoolRow struct {
	Pool     string `json:"pool"`
	Protocol string `json:"protocol"`
	Family   string `json:"family"`
	Capacity string `json:"capacity"` // a decimal integer: an IPv6 pool may exceed 2^64
	InUse    int    `json:"inUse"`
	Free     string `json:"free"`
}

// Pools reports every pool's capacity and use.
func (s *Snapshot) Pools() ([]PoolRow, error) {
	if s.Config == nil {
		return nil, s.ConfigErr
	}
	a, _ := s.restore(s.Config.Pools)
	var out []PoolRow
	for _, st := range a.Stats() {
		p, _ := s.Config.Pool(st.Pool)
		free := new(big.Int).Sub(st.Capacity, big.NewInt(int64(st.InUse)))
		out = append(out, PoolRow{Pool: st.Pool, Protocol: p.Protocol.String(), Family: st.Family.String(),
			Capacity: st.Capacity.String(), InUse: st.InUse, Free: free.String()})
	}
	return out, nil
}

// Change is what a new configuration does to one Service's addresses.
type Change struct {
	Service string `json:"service"`
	IPs     string `json:"ips"`
	Before  string `json:"poolBefore"`
	After   string `json:"poolAfter,omitempty"`
	Outcome string `json:"outcome"` // keeps, moves-pool, loses
	Reason  string `json:"reason,omitempty"`
}

// Validate parses text (a ConfigMap manifest or the bare configuration) and reports
// what it would do to every Service that holds an address. A configuration error is
// returned as config.Errors; the controller would refuse a configuration under which
// any Service loses its address.
func (s *Snapshot) Validate(text []byte, key string) ([]Change, error) {
	cfgText, err := fileText(text, key)
	if err != nil {
		return nil, err
	}
	// The verdict is the controller's own rule; the table says what it means per Service.
	var held []config.Held
	for i := range s.Services {
		held = append(held, k8s.HeldAddresses([]*corev1.Service{&s.Services[i]}, s.Class)...)
	}
	cfg, verdict := config.Admit(cfgText, held)
	var refused *config.Refused
	if verdict != nil && !errors.As(verdict, &refused) {
		return nil, verdict // invalid: config.Errors
	}
	if cfg == nil {
		cfg, _ = config.Parse(cfgText)
	}
	_, lost := s.restore(cfg.Pools)
	var out []Change
	for _, svc := range s.managed() {
		ips := k8s.IngressIPs(svc)
		if len(ips) == 0 {
			continue
		}
		c := Change{Service: k8s.Key(svc), IPs: joinIPs(ips), Before: poolName(s.Config, ips[0]), After: poolName(cfg, ips[0]), Outcome: "keeps"}
		if err := lost[c.Service]; err != nil {
			c.Outcome, c.After, c.Reason = "loses", "", err.Error()
		} else if c.Before != c.After {
			c.Outcome = "moves-pool"
		}
		out = append(out, c)
	}
	return out, verdict
}

// ValidateFile checks a configuration file (a ConfigMap manifest or the bare
// configuration) without a cluster: what the controller would say of it before looking
// at which addresses Services hold.
func ValidateFile(text []byte, key string) (*config.Config, error) {
	cfgText, err := fileText(text, key)
	if err != nil {
		return nil, err
	}
	return config.Admit(cfgText, nil)
}

// fileText accepts a ConfigMap manifest (taking data[key]) or the configuration itself.
func fileText(text []byte, key string) ([]byte, error) {
	if !strings.Contains(string(text), "kind: ConfigMap") {
		return text, nil
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(text, &cm); err != nil {
		return nil, fmt.Errorf("read the ConfigMap manifest: %w", err)
	}
	v, ok := cm.Data[cmp.Or(key, "config")]
	if !ok {
		return nil, fmt.Errorf("the ConfigMap manifest has no data.%s", cmp.Or(key, "config"))
	}
	return []byte(v), nil
}

func poolName(c *config.Config, ip netip.Addr) string {
	if c == nil {
		return ""
	}
	if p, ok := c.PoolOf(ip); ok {
		return p.Name
	}
	return "(none)"
}

func joinIPs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

// planInput builds the plan's input as every speaker sees it, with the nodes' Ready
// condition standing in for live speakers (memberlist is not visible through the API)
// and the absence of an IPVSUnavailable Event for the ability to forward.
func (s *Snapshot) planInput(self string) plan.Input {
	in := plan.Input{Config: s.Config, Self: self, Forwarders: map[string]bool{}}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		in.Forwarders[n.Name] = !s.NoIPVS[n.Name]
		in.Nodes = append(in.Nodes, k8s.PlanNode(n))
	}
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for i := range s.Slices {
		es := &s.Slices[i]
		key := es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]
		bySvc[key] = append(bySvc[key], es)
	}
	for _, svc := range s.managed() {
		if ips := k8s.IngressIPs(svc); len(ips) > 0 {
			in.Services = append(in.Services, k8s.PlanService(svc, ips, bySvc[k8s.Key(svc)]))
		}
	}
	return in
}

// StatusRow is one address of one Service.
type StatusRow struct {
	Service string `json:"service"`
	IP      string `json:"ip"`
	Pool    string `json:"pool"`
	Mode    string `json:"mode"`
	// Announcers are the nodes whose speakers last said they announce the address, or,
	// where they said nothing recent, the nodes the election picks among Ready nodes.
	Announcers []string `json:"announcers"`
	// Published is true when Announcers comes from the speakers' own word.
	Published bool `json:"published"`
	// Peers are, in BGP mode, the routers the announcing nodes are configured to
	// advertise to (their session state is in the speakers' metrics).
	Peers []string `json:"peers,omitempty"`
}

// Status lists every address Herald gave out and the nodes that announce it.
func (s *Snapshot) Status() ([]StatusRow, error) {
	if s.Config == nil {
		return nil, s.ConfigErr
	}
	in := s.planInput("")
	d := plan.Compute(in)
	said := s.published()
	ready := map[string]bool{}
	peers := map[string][]string{} // node -> the routers its node selectors pick
	for _, n := range in.Nodes {
		ready[n.Name] = n.Ready
		for _, p := range s.Config.Peers {
			if p.SelectsNode(n.Labels) {
				peers[n.Name] = append(peers[n.Name], p.Address.String())
			}
		}
	}
	var out []StatusRow
	for _, dec := range d.Decisions {
		r := StatusRow{Service: dec.Service, IP: dec.IP.String(), Pool: dec.Pool, Mode: dec.Protocol.String()}
		switch {
		case dec.Pool == "":
			r.Pool, r.Mode = "(none)", "-"
		case dec.Owner != "":
			r.Announcers = []string{dec.Owner}
		default:
			r.Announcers = dec.Announcers
		}
		// A node that is not Ready cannot vouch for itself any more.
		var pub []string
		for _, n := range said[dec.Service+" "+dec.IP.String()] {
			if ready[n] {
				pub = append(pub, n)
			}
		}
		if len(pub) > 0 {
			if dec.Protocol == config.Layer2 {
				pub = pub[:1] // one owner: the newest claim (a crashed speaker never withdraws)
			}
			slices.Sort(pub)
			r.Announcers, r.Published = pub, true
		}
		if dec.Protocol == config.BGP {
			for _, n := range r.Announcers {
				for _, a := range peers[n] {
					if !slices.Contains(r.Peers, a) {
						r.Peers = append(r.Peers, a)
					}
				}
			}
			slices.Sort(r.Peers)
		}
		out = append(out, r)
	}
	return out, nil
}

// Explain says, in sentences, why a Service has or has not an address and who announces it.
func (s *Snapshot) Explain(key string) ([]string, error) {
	var svc *corev1.Service
	for i := range s.Services {
		if k8s.Key(&s.Services[i]) == key {
			svc = &s.Services[i]
		}
	}
	if svc == nil {
		return nil, fmt.Errorf("no Service %s", key)
	}
	var out []string
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return []string{fmt.Sprintf("%s is of type %s: Herald serves only type LoadBalancer.", key, svc.Spec.Type)}, nil
	}
	if !k8s.ClassIsOurs(svc, s.Class) {
		return []string{fmt.Sprintf("%s has loadBalancerClass %q: another implementation serves it.", key, *svc.Spec.LoadBalancerClass)}, nil
	}
	if s.Config == nil {
		out = append(out, fmt.Sprintf("Herald has no valid configuration: %v.", s.ConfigErr))
	}
	ips := k8s.IngressIPs(svc)
	if len(ips) == 0 {
		out = append(out, key+" has no address yet.")
		if e := s.lastEvent(key, corev1.EventTypeWarning); e != nil {
			out = append(out, fmt.Sprintf("The controller says (%s): %s", e.Reason, e.Message))
		} else if _, err := k8s.Request(svc); err != nil {
			out = append(out, "Its request is invalid: "+err.Error())
		}
		return out, nil
	}
	out = append(out, fmt.Sprintf("%s has %s.", key, joinIPs(ips)))
	if s.Config == nil {
		return out, nil
	}
	for _, n := range s.Nodes {
		d := plan.Compute(s.planInput(n.Name))
		for _, dec := range d.Decisions {
			if dec.Service != key {
				continue
			}
			if dec.Pool == "" {
				out = append(out, fmt.Sprintf("%s is in no pool of the configuration: nobody announces it.", dec.IP))
				return out, nil
			}
			verb := "does not announce"
			if dec.Announce {
				verb = "announces"
			}
			out = append(out, fmt.Sprintf("node %s %s %s (%s, pool %s): %s.", n.Name, verb, dec.IP, dec.Protocol, dec.Pool, strings.ReplaceAll(dec.Reason.String(), "_", " ")))
			if pool, ok := s.Config.Pool(dec.Pool); ok && !pool.Forward && dec.Announce {
				out = append(out, fmt.Sprintf("  pool %s does not forward: kube-proxy on node %s delivers the traffic (ipMode VIP).", dec.Pool, n.Name))
			}
		}
		out = append(out, forwardLines(n.Name, svc, d.Forward)...)
	}
	if len(s.Nodes) == 0 {
		out = append(out, "There are no nodes to announce it.")
	}
	return out, nil
}

// forwardLines says what IPVS on node does with the Service's ports.
func forwardLines(node string, svc *corev1.Service, fs []forward.Service) []string {
	var out []string
	ips := k8s.IngressIPs(svc)
	for _, f := range fs {
		ours := slices.Contains(ips, f.VIP) && slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
			proto, _ := transport.Parse(string(p.Protocol))
			return uint16(p.Port) == f.Port && proto == f.Proto
		})
		if !ours {
			continue
		}
		var rs []string
		for _, r := range f.RealServers {
			rs = append(rs, netip.AddrPortFrom(r.Addr, r.Port).String())
		}
		if len(rs) > 6 {
			rs = append(rs[:6], fmt.Sprintf("and %d more", len(rs)-6))
		}
		how := "masqueraded"
		if !f.Masquerade {
			how = "keeping the client's address"
		}
		line := fmt.Sprintf("  IPVS on node %s: %s/%s, scheduler %s, %s, to %d real servers: %s", node,
			netip.AddrPortFrom(f.VIP, f.Port), f.Proto, cmp.Or(f.Scheduler, "rr"), how, len(f.RealServers), strings.Join(rs, ", "))
		if len(f.RealServers) == 0 {
			line = fmt.Sprintf("  IPVS on node %s: %s/%s has no real server (no ready node or endpoint): connections are refused.", node, netip.AddrPortFrom(f.VIP, f.Port), f.Proto)
		}
		if f.Persistence > 0 {
			line += fmt.Sprintf(" (ClientIP affinity %s)", f.Persistence)
		}
		if len(f.SourceRanges) > 0 {
			line += fmt.Sprintf(" (only from %v)", f.SourceRanges)
		}
		out = append(out, line)
	}
	return out
}

func (s *Snapshot) lastEvent(key, typ string) *corev1.Event {
	var last *corev1.Event
	for i := range s.Events {
		e := &s.Events[i]
		if e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name != key || e.Type != typ {
			continue
		}
		if last == nil || e.LastTimestamp.After(last.LastTimestamp.Time) {
			last = e
		}
	}
	return last
}
