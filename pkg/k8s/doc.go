// Package k8s is Herald's Kubernetes plumbing shared by the controller, the speaker and
// the plugin: which Services are Herald's and what they ask for (annotations, spec), the
// configuration ConfigMaps (the admin's and the one in force), Services and Nodes as the
// plan sees them, informer transforms that keep only what Herald reads, client
// construction, Event recording and the vocabulary of Herald's Events. It runs on Core,
// a client of core/v1 and discovery/v1 only, and must not import client-go's typed
// clientset or informer factory: the speaker imports this package, and those link every
// API group.
package k8s
