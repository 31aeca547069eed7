// Package k8stest runs a real control plane, etcd and kube-apiserver built from their Go
// modules by hack/build-control-plane.sh, for tests and the lab.
//
// Start brings one up on free ports in a directory of its own (certificates, data, logs)
// and returns a ready *rest.Config with cluster-admin rights; Shared gives the tests of
// one package a single control plane. Without kube-controller-manager, namespaces never
// finish deleting: tests create uniquely named namespaces and delete their objects.
package k8stest
