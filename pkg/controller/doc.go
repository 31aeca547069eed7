// Package controller is Herald's IP controller: it gives every LoadBalancer Service that
// is Herald's an address from the configured pools and publishes it in the Service's
// status.loadBalancer.ingress.
//
// It follows the client-go controller shape: informers for Services and the ConfigMap
// feed a rate-limited work queue of keys; each sync re-reads the listers. Before it hands
// out anything new it restores every assignment already written in Service statuses, so
// a restart or a change of leader changes no address. A configuration that does not
// parse, or that would take away an address in use, is refused and the last good one
// stays in force. Events are recorded on change only, never once per resync.
package controller
