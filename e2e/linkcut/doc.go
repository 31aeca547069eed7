// Package linkcut measures, inside the ip_vs VM of hack/vm, what a client sees when one
// node's link is cut under each forwarding mode (none, ipvs, endpoints): three node
// namespaces on a bridge, each running a real speaker process against a real API server,
// pods routed like a pod network, and the nftables rules kube-proxy would write for the
// Service. Its only test runs with
//
//	go run ./hack/vm -icount -control-plane -bin ./speaker -run InVM -timeout 20m ./e2e/linkcut
package linkcut
