package e2e

import "github.com/heraldlb/herald/hack/cluster"

// Cluster is the lab (hack/cluster) with the tests' own helpers as methods.
type Cluster struct{ *cluster.Cluster }

// The lab's names, as the tests use them.
type (
	Options = cluster.Options
	Node    = cluster.Node
	Router  = cluster.Router
	BIRD    = cluster.BIRD
	FRRPath = cluster.FRRPath
	TB      = cluster.TB
)

// Addresses of the lab network.
const (
	RouterIP4   = cluster.RouterIP4
	ServicePort = cluster.ServicePort
)

// FRRConfig is the router's bgpd configuration for the nodes.
var FRRConfig = cluster.FRRConfig

// Start brings up a lab cluster with speaker processes from speakerBin.
func Start(t TB, speakerBin string, opts Options) *Cluster {
	return &Cluster{cluster.Start(t, speakerBin, opts)}
}

// BFDDConfig is the router's bfdd configuration with one profile.
var BFDDConfig = cluster.BFDDConfig
