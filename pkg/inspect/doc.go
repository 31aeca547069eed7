// Package inspect answers an admin's questions about Herald from what the API server
// holds — the configuration, Services, EndpointSlices, Nodes and Events — with the same
// code the controller and the speakers run (pkg/config, pkg/ipam, pkg/plan): how full
// each pool is, what a new configuration would do to the Services' addresses, which node
// announces each address, and why a Service is pending or not announced.
package inspect
