package config

// The raw document, field for field as written. Pointers mark keys whose absence differs
// from their zero value. Tags name the keys; decode.go reads them strictly and marshal.go
// writes them back.

type rawConfig struct {
	Peers          []rawPeer         `yaml:"peers,omitempty"`
	BGPCommunities map[string]string `yaml:"bgp-communities,omitempty"`
	AddressPools   []rawPool         `yaml:"address-pools,omitempty"`
	BFDProfiles    []rawBFDProfile   `yaml:"bfd-profiles,omitempty"`
	Forwarding     string            `yaml:"forwarding,omitempty"`
	RelayLocal     bool              `yaml:"relay-local,omitempty"`
}

type rawPeer struct {
	MyASN         *uint32           `yaml:"my-asn,omitempty"`
	PeerASN       *uint32           `yaml:"peer-asn,omitempty"`
	PeerAddress   string            `yaml:"peer-address,omitempty"`
	SourceAddress string            `yaml:"source-address,omitempty"`
	PeerPort      *uint16           `yaml:"peer-port,omitempty"`
	HoldTime      string            `yaml:"hold-time,omitempty"`
	KeepaliveTime string            `yaml:"keepalive-time,omitempty"`
	RouterID      string            `yaml:"router-id,omitempty"`
	NodeSelectors []rawNodeSelector `yaml:"node-selectors,omitempty"`
	Password      string            `yaml:"password,omitempty"`
	BFDProfile    string            `yaml:"bfd-profile,omitempty"`
	EBGPMultiHop  bool              `yaml:"ebgp-multihop,omitempty"`
}

type rawNodeSelector struct {
	MatchLabels      map[string]string    `yaml:"match-labels,omitempty"`
	MatchExpressions []rawSelectorRequire `yaml:"match-expressions,omitempty"`
}

type rawSelectorRequire struct {
	Key      string   `yaml:"key"`
	Operator string   `yaml:"operator"`
	Values   []string `yaml:"values,omitempty"`
}

type rawPool struct {
	Name              string             `yaml:"name"`
	Protocol          string             `yaml:"protocol"`
	Addresses         []string           `yaml:"addresses"`
	AvoidBuggyIPs     bool               `yaml:"avoid-buggy-ips,omitempty"`
	AutoAssign        *bool              `yaml:"auto-assign,omitempty"`
	BGPAdvertisements []rawAdvertisement `yaml:"bgp-advertisements,omitempty"`
	Interfaces        []string           `yaml:"interfaces,omitempty"`
	Forwarding        string             `yaml:"forwarding,omitempty"`
	RelayLocal        *bool              `yaml:"relay-local,omitempty"`
}

type rawAdvertisement struct {
	AggregationLength   *int     `yaml:"aggregation-length,omitempty"`
	AggregationLengthV6 *int     `yaml:"aggregation-length-v6,omitempty"`
	LocalPref           *uint32  `yaml:"localpref,omitempty"`
	Communities         []string `yaml:"communities,omitempty"`
	LargeCommunities    []string `yaml:"large-communities,omitempty"`
}

type rawBFDProfile struct {
	Name             string  `yaml:"name"`
	ReceiveInterval  *uint32 `yaml:"receive-interval,omitempty"`
	TransmitInterval *uint32 `yaml:"transmit-interval,omitempty"`
	DetectMultiplier *uint32 `yaml:"detect-multiplier,omitempty"`
	EchoInterval     *uint32 `yaml:"echo-interval,omitempty"`
	EchoMode         bool    `yaml:"echo-mode,omitempty"`
	PassiveMode      bool    `yaml:"passive-mode,omitempty"`
	MinimumTTL       *uint32 `yaml:"minimum-ttl,omitempty"`
}
