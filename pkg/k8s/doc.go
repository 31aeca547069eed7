// Package k8s is Herald's Kubernetes plumbing shared by the controller and the speaker:
// which Services are Herald's and what they ask for (annotations, spec), client
// construction, Lease leader election and Event recording.
package k8s
