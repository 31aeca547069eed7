package config

import (
	"net/netip"

	"go.yaml.in/yaml/v3"
)

// Marshal writes c in the ConfigMap format, with every default spelled out, such that
// Parse(Marshal(c)) equals c.
func Marshal(c *Config) ([]byte, error) {
	raw := rawConfig{}
	if len(c.Communities) > 0 {
		raw.BGPCommunities = map[string]string{}
		for name, v := range c.Communities {
			raw.BGPCommunities[name] = v.String()
		}
	}
	for _, b := range c.BFDProfiles {
		raw.BFDProfiles = append(raw.BFDProfiles, rawBFDProfile{
			Name: b.Name, ReceiveInterval: nonZero(b.ReceiveInterval), TransmitInterval: nonZero(b.TransmitInterval),
			DetectMultiplier: nonZero(b.DetectMultiplier), EchoInterval: nonZero(b.EchoInterval),
			EchoMode: b.EchoMode, PassiveMode: b.PassiveMode, MinimumTTL: nonZero(b.MinimumTTL),
		})
	}
	for _, p := range c.Peers {
		rp := rawPeer{
			MyASN: ptr(p.MyASN), PeerASN: ptr(p.ASN), PeerAddress: addrString(p.Address),
			SourceAddress: addrString(p.SourceAddress), PeerPort: ptr(p.Port),
			HoldTime: p.HoldTime.String(), KeepaliveTime: p.KeepaliveTime.String(),
			RouterID: addrString(p.RouterID), Password: p.Password, BFDProfile: p.BFDProfile,
			EBGPMultiHop: p.EBGPMultiHop,
		}
		for _, s := range p.NodeSelectors {
			rs := rawNodeSelector{MatchLabels: s.MatchLabels}
			for _, r := range s.MatchExpressions {
				rs.MatchExpressions = append(rs.MatchExpressions, rawSelectorRequire{Key: r.Key, Operator: r.Operator, Values: r.Values})
			}
			rp.NodeSelectors = append(rp.NodeSelectors, rs)
		}
		raw.Peers = append(raw.Peers, rp)
	}
	for _, p := range c.Pools {
		rp := rawPool{
			Name: p.Name, Protocol: p.Protocol.String(), AvoidBuggyIPs: p.AvoidBuggyIPs,
			AutoAssign: ptr(p.AutoAssign), Interfaces: p.Interfaces, Forwarding: p.Forwarding(),
		}
		if p.RelayLocal {
			rp.RelayLocal = ptr(true)
		}
		for _, r := range p.Addresses {
			rp.Addresses = append(rp.Addresses, r.String())
		}
		for _, a := range p.Advertisements {
			ra := rawAdvertisement{
				AggregationLength: ptr(a.AggregationLength), AggregationLengthV6: ptr(a.AggregationLengthV6),
				LocalPref: ptr(a.LocalPref),
			}
			for _, c := range a.Communities {
				ra.Communities = append(ra.Communities, c.String())
			}
			for _, c := range a.LargeCommunities {
				ra.LargeCommunities = append(ra.LargeCommunities, c.String())
			}
			rp.BGPAdvertisements = append(rp.BGPAdvertisements, ra)
		}
		raw.AddressPools = append(raw.AddressPools, rp)
	}
	return yaml.Marshal(&raw)
}

func ptr[T any](v T) *T { return &v }

func nonZero(v uint32) *uint32 {
	if v == 0 {
		return nil
	}
	return &v
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
