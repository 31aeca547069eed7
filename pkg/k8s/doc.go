// Package k8s is Herald's Kubernetes plumbing shared by the controller, the speaker and
// the plugin: which Services are Herald's and what they ask for (annotations, spec), the
// configuration ConfigMaps (the admin's and the one in force), Services and Nodes as the
// plan sees them, informer transforms that keep only what Herald reads, client
// construction, Lease leader election, Event recording and the vocabulary of Herald's
// Events.
package k8s
