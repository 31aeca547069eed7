package main

import (
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

func query(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	_ = b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAnswer(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "mutability-test"}, Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.3.4", "fd00::34"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIPs: []string{"None"}}},
	} {
		_ = idx.Add(s)
	}
	r := &resolver{svcs: corelisters.NewServiceLister(idx), suffix: ".svc.cluster.local."}
	for _, tc := range []struct {
		name  string
		typ   dnsmessage.Type
		rcode dnsmessage.RCode
		want  []string
	}{
		{"mutability-test.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"10.96.3.4"}},
		{"Mutability-Test.NS1.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, []string{"fd00::34"}},
		{"mutability-test.ns1.svc.cluster.local.", dnsmessage.TypeMX, dnsmessage.RCodeSuccess, nil},
		{"mutability-test.ns2.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"headless.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"mutability-test.ns1.svc.cluster.local.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
	} {
		out := r.answer(query(t, tc.name, tc.typ))
		var m dnsmessage.Message
		if err := m.Unpack(out); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, a := range m.Answers {
			switch b := a.Body.(type) {
			case *dnsmessage.AResource:
				got = append(got, netip.AddrFrom4(b.A).String())
			case *dnsmessage.AAAAResource:
				got = append(got, netip.AddrFrom16(b.AAAA).String())
			}
		}
		if m.ID != 7 || !m.Response || m.RCode != tc.rcode || !slices.Equal(got, tc.want) {
			t.Errorf("%s %v: id %d response %v rcode %v answers %v, want rcode %v answers %v", tc.name, tc.typ, m.ID, m.Response, m.RCode, got, tc.rcode, tc.want)
		}
	}
	// Garbage and responses get no answer.
	if out := r.answer([]byte{1, 2, 3}); out != nil {
		t.Errorf("answered garbage: %x", out)
	}
}
