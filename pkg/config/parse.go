package config

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Parse reads and validates a configuration. It returns every problem it finds as Errors;
// a configuration with any problem is never partly applied.
func Parse(text []byte) (*Config, error) {
	raw, d := decodeDocument(text)
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	v := &validator{d: d}
	cfg := v.config(raw)
	if len(v.errs) > 0 {
		return nil, v.errs
	}
	cfg.Warnings = v.warns
	return cfg, nil
}

type validator struct {
	d     *decoder
	errs  Errors
	warns []Warning
}

func (v *validator) fail(path, value, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Line: v.d.line(path), Value: value, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) warn(path, value, format string, args ...any) {
	v.warns = append(v.warns, Warning{Path: path, Line: v.d.line(path), Value: value, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) config(raw *rawConfig) *Config {
	cfg := &Config{Communities: map[string]Community{}}

	aliases := slices.Sorted(maps.Keys(raw.BGPCommunities))
	for _, name := range aliases {
		path := "bgp-communities." + name
		c, ok := parseCommunity(raw.BGPCommunities[name])
		if !ok {
			v.fail(path, raw.BGPCommunities[name], "must be a community written as two numbers from 0 to 65535, \"high:low\"")
			continue
		}
		cfg.Communities[name] = c
	}

	bfd := map[string]bool{}
	for i, rp := range raw.BFDProfiles {
		p := v.bfdProfile(fmt.Sprintf("bfd-profiles[%d]", i), rp, bfd)
		cfg.BFDProfiles = append(cfg.BFDProfiles, p)
	}

	for i, rp := range raw.Peers {
		path := fmt.Sprintf("peers[%d]", i)
		p := v.peer(path, rp, bfd)
		for j := range cfg.Peers {
			if reflect.DeepEqual(cfg.Peers[j], p) {
				v.fail(path, "", "is the same peer as peers[%d]", j)
			}
		}
		cfg.Peers = append(cfg.Peers, p)
	}

	forward := v.forwarding("forwarding", raw.Forwarding, ForwardingIPVS)
	names := map[string]int{}
	for i, rp := range raw.AddressPools {
		path := fmt.Sprintf("address-pools[%d]", i)
		p := v.pool(path, rp, cfg.Communities, forward, raw.RelayLocal)
		if p.Name != "" {
			if j, dup := names[p.Name]; dup {
				v.fail(path+".name", p.Name, "pool name is already used by address-pools[%d]", j)
			}
			names[p.Name] = i
		}
		cfg.Pools = append(cfg.Pools, p)
	}
	v.overlaps(cfg.Pools)
	if raw.RelayLocal && !slices.ContainsFunc(cfg.Pools, func(p Pool) bool { return p.RelayLocal }) {
		v.warn("relay-local", "true", "applies to no pool: it is for layer2 pools with forwarding none")
	}
	return cfg
}

func (v *validator) bfdProfile(path string, rp rawBFDProfile, seen map[string]bool) BFDProfile {
	p := BFDProfile{Name: rp.Name, EchoMode: rp.EchoMode, PassiveMode: rp.PassiveMode}
	switch {
	case rp.Name == "":
		v.fail(path+".name", "", "is required")
	case seen[rp.Name]:
		v.fail(path+".name", rp.Name, "profile name is already used")
	}
	seen[rp.Name] = true
	bounded := func(key string, val *uint32, lo, hi uint32) uint32 {
		if val == nil {
			return 0
		}
		if *val < lo || *val > hi {
			v.fail(path+"."+key, strconv.FormatUint(uint64(*val), 10), "must be from %d to %d", lo, hi)
		}
		return *val
	}
	p.ReceiveInterval = bounded("receive-interval", rp.ReceiveInterval, 10, 60000)
	p.TransmitInterval = bounded("transmit-interval", rp.TransmitInterval, 10, 60000)
	p.DetectMultiplier = bounded("detect-multiplier", rp.DetectMultiplier, 2, 255)
	p.EchoInterval = bounded("echo-interval", rp.EchoInterval, 10, 60000)
	p.MinimumTTL = bounded("minimum-ttl", rp.MinimumTTL, 1, 254)
	if rp.EchoMode {
		// MetalLB 0.12 accepts echo mode, so Herald does too, and says what it does instead.
		v.warn(path+".echo-mode", "true", "is ignored: Herald runs BFD in asynchronous mode only (RFC 5880 §6.1), without echo; sessions using this profile still detect failures with the receive and transmit intervals")
	}
	return p
}

func (v *validator) peer(path string, rp rawPeer, bfd map[string]bool) Peer {
	p := Peer{
		Port:         DefaultPeerPort,
		Password:     rp.Password,
		EBGPMultiHop: rp.EBGPMultiHop,
		BFDProfile:   rp.BFDProfile,
	}
	asn := func(key string, val *uint32) uint32 {
		if val == nil || *val == 0 {
			v.fail(path+"."+key, "", "is required and must not be 0")
			return 0
		}
		return *val
	}
	p.MyASN = asn("my-asn", rp.MyASN)
	p.ASN = asn("peer-asn", rp.PeerASN)
	if rp.EBGPMultiHop && p.MyASN != 0 && p.MyASN == p.ASN {
		v.fail(path+".ebgp-multihop", "true", "is for eBGP peers only: my-asn and peer-asn are both %d (iBGP)", p.ASN)
	}
	if rp.PeerAddress == "" {
		v.fail(path+".peer-address", "", "is required")
	} else {
		p.Address = v.addr(path+".peer-address", rp.PeerAddress)
	}
	if rp.SourceAddress != "" {
		p.SourceAddress = v.addr(path+".source-address", rp.SourceAddress)
		if p.Address.IsValid() && p.SourceAddress.IsValid() && p.Address.Is4() != p.SourceAddress.Is4() {
			v.fail(path+".source-address", rp.SourceAddress, "must be of the same address family as peer-address")
		}
	}
	if rp.RouterID != "" {
		p.RouterID = v.addr(path+".router-id", rp.RouterID)
		if p.RouterID.IsValid() && !p.RouterID.Is4() {
			v.fail(path+".router-id", rp.RouterID, "must be an IPv4 address (a BGP identifier is 32 bits)")
		}
	}
	if rp.PeerPort != nil {
		if *rp.PeerPort == 0 {
			v.fail(path+".peer-port", "0", "must be from 1 to 65535")
		}
		p.Port = *rp.PeerPort
	}
	if strings.ContainsAny(rp.Password, "\n\r") {
		v.fail(path+".password", "", "must not contain line breaks")
	}
	if rp.BFDProfile != "" && !bfd[rp.BFDProfile] {
		v.fail(path+".bfd-profile", rp.BFDProfile, "names no profile in bfd-profiles")
	}

	p.HoldTime = DefaultHoldTime
	if rp.HoldTime != "" {
		p.HoldTime = v.duration(path+".hold-time", rp.HoldTime)
		if p.HoldTime != 0 && p.HoldTime < 3*time.Second {
			v.fail(path+".hold-time", rp.HoldTime, "must be 0 (no keepalives) or at least 3s")
		}
	}
	p.KeepaliveTime = p.HoldTime / 3
	if rp.KeepaliveTime != "" {
		p.KeepaliveTime = v.duration(path+".keepalive-time", rp.KeepaliveTime)
		if p.KeepaliveTime > p.HoldTime {
			v.fail(path+".keepalive-time", rp.KeepaliveTime, "must not be longer than hold-time (%s)", p.HoldTime)
		}
	}

	for i, rs := range rp.NodeSelectors {
		p.NodeSelectors = append(p.NodeSelectors, v.nodeSelector(fmt.Sprintf("%s.node-selectors[%d]", path, i), rs))
	}
	return p
}

func (v *validator) nodeSelector(path string, rs rawNodeSelector) NodeSelector {
	s := NodeSelector{MatchLabels: rs.MatchLabels}
	for _, k := range slices.Sorted(maps.Keys(rs.MatchLabels)) {
		if msg := labelKeyError(k); msg != "" {
			v.fail(path+".match-labels."+k, k, "is not a label key: %s", msg)
		}
		if msg := labelValueError(rs.MatchLabels[k]); msg != "" {
			v.fail(path+".match-labels."+k, rs.MatchLabels[k], "is not a label value: %s", msg)
		}
	}
	for i, re := range rs.MatchExpressions {
		ep := fmt.Sprintf("%s.match-expressions[%d]", path, i)
		if re.Key == "" {
			v.fail(ep+".key", "", "is required")
		} else if msg := labelKeyError(re.Key); msg != "" {
			v.fail(ep+".key", re.Key, "is not a label key: %s", msg)
		}
		for j, val := range re.Values {
			if msg := labelValueError(val); msg != "" {
				v.fail(fmt.Sprintf("%s.values[%d]", ep, j), val, "is not a label value: %s", msg)
			}
		}
		switch re.Operator {
		case "In", "NotIn":
			if len(re.Values) == 0 {
				v.fail(ep+".values", "", "must list at least one value for operator %s", re.Operator)
			}
		case "Exists", "DoesNotExist":
			if len(re.Values) > 0 {
				v.fail(ep+".values", "", "must be empty for operator %s", re.Operator)
			}
		default:
			v.fail(ep+".operator", re.Operator, "must be one of In, NotIn, Exists, DoesNotExist")
		}
		s.MatchExpressions = append(s.MatchExpressions, Requirement{Key: re.Key, Operator: re.Operator, Values: re.Values})
	}
	return s
}

// forwarding reads a "forwarding" key: ipvs, endpoints or none; def when absent.
func (v *validator) forwarding(path, s, def string) string {
	switch s {
	case "":
		return def
	case ForwardingIPVS, ForwardingEndpoints, ForwardingNone:
		return s
	}
	v.fail(path, s, "must be %s, %s or %s", ForwardingIPVS, ForwardingEndpoints, ForwardingNone)
	return def
}

// relayLocal reads a pool's "relay-local": asked for explicitly, it must be a layer2 pool
// with forwarding none; inherited from the top level, it applies where it can.
func (v *validator) relayLocal(path string, explicit *bool, inherited bool, p Pool) bool {
	if explicit == nil {
		return inherited && p.Protocol == Layer2 && !p.Forward
	}
	if !*explicit {
		return false
	}
	switch {
	case p.Protocol == BGP:
		v.fail(path, "true", "is only for layer2 pools: in BGP mode every node with a ready endpoint announces a Local Service's address already")
	case p.Forward:
		v.fail(path, "true", "needs forwarding none: with forwarding %s the announcing node's IPVS sends Local traffic to its own endpoints", p.Forwarding())
	}
	return p.Protocol == Layer2 && !p.Forward
}

func (v *validator) pool(path string, rp rawPool, aliases map[string]Community, forward string, relay bool) Pool {
	forward = v.forwarding(path+".forwarding", rp.Forwarding, forward)
	p := Pool{
		Name:          rp.Name,
		AutoAssign:    rp.AutoAssign == nil || *rp.AutoAssign,
		AvoidBuggyIPs: rp.AvoidBuggyIPs,
		Interfaces:    rp.Interfaces,
		Forward:       forward != ForwardingNone,
		ToEndpoints:   forward == ForwardingEndpoints,
	}
	if rp.Name == "" {
		v.fail(path+".name", "", "is required")
	}
	switch rp.Protocol {
	case "layer2":
		p.Protocol = Layer2
	case "bgp":
		p.Protocol = BGP
	case "":
		v.fail(path+".protocol", "", "is required: layer2 or bgp")
	default:
		v.fail(path+".protocol", rp.Protocol, "must be layer2 or bgp")
	}
	if len(rp.Addresses) == 0 {
		v.fail(path+".addresses", "", "must list at least one address range")
	}
	for i, s := range rp.Addresses {
		ap := fmt.Sprintf("%s.addresses[%d]", path, i)
		if r, err := ParseRange(s); err != nil {
			v.fail(ap, s, "%v", err)
		} else {
			p.Addresses = append(p.Addresses, r)
		}
	}
	for i, name := range rp.Interfaces {
		if name == "" || strings.ContainsAny(name, " /\n") || len(name) > 15 {
			v.fail(fmt.Sprintf("%s.interfaces[%d]", path, i), name, "is not a valid interface name")
		}
	}

	p.RelayLocal = v.relayLocal(path+".relay-local", rp.RelayLocal, relay, p)

	if p.Protocol == Layer2 && len(rp.BGPAdvertisements) > 0 {
		v.fail(path+".bgp-advertisements", "", "is only for pools with protocol bgp")
	}
	if p.Protocol != BGP {
		return p
	}
	advs := rp.BGPAdvertisements
	if len(advs) == 0 {
		advs = []rawAdvertisement{{}}
	}
	// As in MetalLB, two advertisements written alike are a mistake, not a no-op.
	for i := range advs {
		for j := range i {
			if reflect.DeepEqual(advs[i], advs[j]) {
				v.fail(fmt.Sprintf("%s.bgp-advertisements[%d]", path, i), "", "is the same advertisement as bgp-advertisements[%d]", j)
				break
			}
		}
	}
	for i, ra := range advs {
		a := v.advertisement(fmt.Sprintf("%s.bgp-advertisements[%d]", path, i), ra, p.Addresses, aliases)
		// Written differently but meaning the same ({} and {aggregation-length: 32}):
		// accepted, as by MetalLB, and kept once.
		if !slices.ContainsFunc(p.Advertisements, func(b Advertisement) bool { return reflect.DeepEqual(a, b) }) {
			p.Advertisements = append(p.Advertisements, a)
		}
	}
	return p
}

func (v *validator) advertisement(path string, ra rawAdvertisement, ranges []AddressRange, aliases map[string]Community) Advertisement {
	a := Advertisement{AggregationLength: DefaultAggregationLength, AggregationLengthV6: DefaultAggregationV6}
	if ra.LocalPref != nil {
		a.LocalPref = *ra.LocalPref
	}
	// The aggregate must contain every prefix the pool is made of, and be no longer than
	// a host route.
	aggregation := func(key string, val *int, is4 bool, max int) int {
		if val == nil {
			return max
		}
		if *val < 0 || *val > max {
			v.fail(path+"."+key, strconv.Itoa(*val), "must be from 0 to %d", max)
			return *val
		}
		// Each address entry must fit in aggregates of this length: the entry's widest
		// prefix may not be wider than the aggregate (a range is several prefixes; as in
		// MetalLB, its widest one decides).
		for _, r := range ranges {
			if r.First.Is4() != is4 {
				continue
			}
			widest := r.Prefixes()[0]
			for _, pfx := range r.Prefixes() {
				if pfx.Bits() < widest.Bits() {
					widest = pfx
				}
			}
			if *val < widest.Bits() {
				v.fail(path+"."+key, strconv.Itoa(*val), "must be at least %d: the pool's prefix %s is longer than the aggregate", widest.Bits(), widest)
				return *val
			}
		}
		return *val
	}
	a.AggregationLength = aggregation("aggregation-length", ra.AggregationLength, true, 32)
	a.AggregationLengthV6 = aggregation("aggregation-length-v6", ra.AggregationLengthV6, false, 128)

	for i, s := range ra.Communities {
		// As in MetalLB, a community listed twice as written is refused (an alias and
		// its value spelled out are two entries that name one community: accepted).
		if j := slices.Index(ra.Communities[:i], s); j >= 0 {
			v.fail(fmt.Sprintf("%s.communities[%d]", path, i), s, "is listed twice (also communities[%d])", j)
			continue
		}
		c, ok := aliases[s]
		if !ok {
			c, ok = parseCommunity(s)
		}
		if !ok {
			v.fail(fmt.Sprintf("%s.communities[%d]", path, i), s, "must be \"high:low\" with numbers from 0 to 65535, or a name from bgp-communities")
			continue
		}
		a.Communities = append(a.Communities, c)
	}
	slices.Sort(a.Communities)
	a.Communities = slices.Compact(a.Communities)

	for i, s := range ra.LargeCommunities {
		if j := slices.Index(ra.LargeCommunities[:i], s); j >= 0 {
			v.fail(fmt.Sprintf("%s.large-communities[%d]", path, i), s, "is listed twice (also large-communities[%d])", j)
			continue
		}
		c, ok := parseLargeCommunity(s)
		if !ok {
			v.fail(fmt.Sprintf("%s.large-communities[%d]", path, i), s, "must be \"global:local1:local2\" with numbers from 0 to 4294967295")
			continue
		}
		a.LargeCommunities = append(a.LargeCommunities, c)
	}
	slices.SortFunc(a.LargeCommunities, compareLarge)
	a.LargeCommunities = slices.Compact(a.LargeCommunities)
	return a
}

// overlaps reports every address range that shares an address with an earlier one,
// within a pool or across pools.
func (v *validator) overlaps(pools []Pool) {
	type placed struct {
		r    AddressRange
		path string
	}
	var all []placed
	for i, p := range pools {
		for j, r := range p.Addresses {
			all = append(all, placed{r, fmt.Sprintf("address-pools[%d].addresses[%d]", i, j)})
		}
	}
	slices.SortStableFunc(all, func(a, b placed) int {
		return cmp.Or(cmp.Compare(a.r.First.BitLen(), b.r.First.BitLen()), a.r.First.Compare(b.r.First))
	})
	for i := 1; i < len(all); i++ {
		prev, cur := all[i-1], all[i]
		if prev.r.First.BitLen() == cur.r.First.BitLen() && cur.r.First.Compare(prev.r.Last) <= 0 {
			v.fail(cur.path, cur.r.String(), "overlaps %s (%s)", prev.path, prev.r)
			if cur.r.Last.Compare(prev.r.Last) < 0 {
				all[i] = prev // keep the wider range as the one later ranges are checked against
			}
		}
	}
}

func (v *validator) addr(path, s string) netip.Addr {
	a, err := parseAddr(s)
	if err != nil {
		v.fail(path, s, "%v", err)
	}
	return a
}

func (v *validator) duration(path, s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		v.fail(path, s, "must be a duration such as 90s or 1m30s")
		return 0
	}
	return d
}

// parseAddr parses a plain IPv4 or IPv6 address, refusing zones and IPv4-mapped IPv6.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("not an IP address")
	case a.Zone() != "":
		return netip.Addr{}, fmt.Errorf("must not carry a zone")
	case a.Is4In6():
		return netip.Addr{}, fmt.Errorf("write IPv4-mapped IPv6 addresses as plain IPv4")
	}
	return a, nil
}

// ParseRange parses one pool entry: a CIDR ("192.168.10.0/24", host bits ignored, as
// MetalLB does) or an inclusive range ("192.168.10.90-192.168.10.100").
func ParseRange(s string) (AddressRange, error) {
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, err := parseAddr(first)
		if err != nil {
			return AddressRange{}, fmt.Errorf("range start %q: %w", strings.TrimSpace(first), err)
		}
		b, err := parseAddr(last)
		if err != nil {
			return AddressRange{}, fmt.Errorf("range end %q: %w", strings.TrimSpace(last), err)
		}
		if a.Is4() != b.Is4() {
			return AddressRange{}, fmt.Errorf("range mixes IPv4 and IPv6")
		}
		if b.Less(a) {
			return AddressRange{}, fmt.Errorf("range ends before it starts")
		}
		return AddressRange{First: a, Last: b}, nil
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return AddressRange{}, fmt.Errorf("not a CIDR prefix or a first-last range")
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return AddressRange{}, fmt.Errorf("must be a plain IPv4 or IPv6 prefix")
	}
	p = p.Masked()
	return AddressRange{First: p.Addr(), Last: lastOf(p)}, nil
}

func parseCommunity(s string) (Community, bool) {
	hi, lo, ok := strings.Cut(s, ":")
	if !ok {
		return 0, false
	}
	h, err1 := strconv.ParseUint(hi, 10, 16)
	l, err2 := strconv.ParseUint(lo, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return Community(h<<16 | l), true
}

func parseLargeCommunity(s string) (LargeCommunity, bool) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return LargeCommunity{}, false
	}
	var n [3]uint32
	for i, p := range parts {
		u, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return LargeCommunity{}, false
		}
		n[i] = uint32(u)
	}
	return LargeCommunity{n[0], n[1], n[2]}, true
}

// labelKeyError says why k is not a Kubernetes label key ("" when it is one): an
// optional DNS subdomain prefix and "/", then a name of at most 63 characters,
// alphanumeric at both ends, with '-', '_' and '.' inside.
func labelKeyError(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	} else if prefix == "" || len(prefix) > 253 || !dnsSubdomain(prefix) {
		return "the prefix before '/' must be a DNS subdomain (lower-case alphanumerics, '-' and '.')"
	}
	if name == "" {
		return "the name must not be empty"
	}
	return labelValueError(name)
}

// labelValueError says why s is not a Kubernetes label value ("" when it is one): empty,
// or at most 63 characters, alphanumeric at both ends, with '-', '_' and '.' inside.
func labelValueError(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 63 {
		return "at most 63 characters"
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return "must begin and end with a letter or digit"
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return "only letters, digits, '-', '_' and '.'"
		}
	}
	return ""
}

func dnsSubdomain(s string) bool {
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
