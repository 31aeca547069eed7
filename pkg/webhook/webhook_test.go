package webhook_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
	"github.com/heraldlb/herald/pkg/webhook"
)

func TestMain(m *testing.M) { k8stest.Main(m) }

func newNamespace(t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	ns, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "webhook-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// The real API server calls the webhook: a broken configuration and one that takes a
// held address are refused at the door with the controller's own message; a good one,
// and any other ConfigMap, pass.
func TestWebhookRefusesAtTheDoor(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns := newNamespace(t, c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	certs := &webhook.Certs{Client: c, Namespace: ns, Secret: "herald-webhook-cert", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	held := []config.Held{{Service: "default/web", IP: netip.MustParseAddr("10.250.0.100")}}
	srv := &webhook.Server{Certs: certs, Reload: 100 * time.Millisecond,
		Validator: &webhook.Validator{Namespace: ns, Name: "config", Key: "config", Held: func() []config.Held { return held }}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })

	vwcName := ns + "-herald-config"
	url := "https://" + ln.Addr().String() + webhook.Path
	if _, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, webhook.Registration(vwcName, ns, url), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), vwcName, metav1.DeleteOptions{})
	})
	// The leader makes the certificate and writes the authority.
	go func() { _ = webhook.Maintain(ctx, certs, vwcName, time.Second, nil) }()

	cms := c.CoreV1().ConfigMaps(ns)
	good := "address-pools:\n- {name: a, protocol: layer2, addresses: [10.250.0.100-10.250.0.110]}\n"
	apply := func(name, text string) error {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"config": text}}
		if _, err := cms.Get(ctx, name, metav1.GetOptions{}); err == nil {
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
			return err
		}
		_, err := cms.Create(ctx, cm, metav1.CreateOptions{})
		return err
	}
	// Until the webhook serves with a trusted certificate the API server ignores it
	// (failurePolicy Ignore): wait until it refuses a broken configuration.
	broken := "address-pools:\n- {name: a, protocol: layer3, addresses: [10.250.0.0/24]}\n"
	var last error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if last = apply("config", broken); last != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook never refused a broken configuration")
		}
	}
	if !strings.Contains(last.Error(), `address-pools[0].protocol (line 2): must be layer2 or bgp: "layer3"`) {
		t.Errorf("refusal of a broken configuration: %v", last)
	}
	_ = cms.Delete(ctx, "config", metav1.DeleteOptions{}) // it may have been created before the webhook served
	if err := apply("config", good); err != nil {
		t.Fatalf("a good configuration was refused: %v", err)
	}
	steal := "address-pools:\n- {name: a, protocol: layer2, addresses: [10.250.0.120-10.250.0.130]}\n"
	err = apply("config", steal)
	if err == nil || !strings.Contains(err.Error(), "10.250.0.100 (held by default/web)") {
		t.Errorf("a configuration taking a held address: %v, want a refusal naming it", err)
	}
	if cm, _ := cms.Get(ctx, "config", metav1.GetOptions{}); cm.Data["config"] != good {
		t.Errorf("a refused edit changed the ConfigMap to %q", cm.Data["config"])
	}
	if err := apply("other", broken); err != nil {
		t.Errorf("another ConfigMap was checked: %v", err)
	}
}

// The certificate is made once, kept while it is good, and renewed when a third of its
// life is left, signed by the same authority (so the caBundle stays right).
func TestCertificateRenewal(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ns := newNamespace(t, c)
	clock := clocktesting.NewFakeClock(time.Now())
	certs := &webhook.Certs{Client: c, Namespace: ns, Secret: "cert", DNSNames: []string{"herald-controller-webhook.herald-system.svc"}, Clock: clock}
	ctx := context.Background()
	first, made, err := certs.Ensure(ctx)
	if err != nil || !made {
		t.Fatalf("Ensure = %v, %v; want made", made, err)
	}
	if _, again, err := certs.Ensure(ctx); err != nil || again {
		t.Fatalf("second Ensure = %v, %v; want left alone", again, err)
	}
	clock.Step(250 * 24 * time.Hour) // past two thirds of a year
	renewed, again, err := certs.Ensure(ctx)
	if err != nil || !again {
		t.Fatalf("Ensure after 250 days = %v, %v; want renewed", again, err)
	}
	leaf := func(s *corev1.Secret) *x509.Certificate {
		b, _ := pem.Decode(s.Data[corev1.TLSCertKey])
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	if leaf(renewed).SerialNumber.Cmp(leaf(first).SerialNumber) == 0 {
		t.Error("the serving certificate was not replaced")
	}
	if string(renewed.Data["ca.crt"]) != string(first.Data["ca.crt"]) {
		t.Error("the authority changed: the caBundle would go stale")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(renewed.Data["ca.crt"])
	if _, err := leaf(renewed).Verify(x509.VerifyOptions{Roots: pool, DNSName: "herald-controller-webhook.herald-system.svc", CurrentTime: clock.Now()}); err != nil {
		t.Errorf("the renewed certificate does not verify: %v", err)
	}
}

// A configuration Herald accepts with warnings is allowed, and the warnings go back to
// the client, which kubectl prints as "Warning: ...".
func TestReviewWarns(t *testing.T) {
	v := &webhook.Validator{Namespace: "herald-system", Name: "config", Key: "config"}
	text := "bfd-profiles:\n- {name: fast, echo-mode: true}\n"
	raw, _ := json.Marshal(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "config", Namespace: "herald-system"}, Data: map[string]string{"config": text}})
	resp := v.Review(&admissionv1.AdmissionRequest{
		UID: "1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}, Namespace: "herald-system", Name: "config",
		Operation: admissionv1.Update, Object: runtime.RawExtension{Raw: raw},
	})
	if !resp.Allowed || len(resp.Warnings) != 1 || !strings.HasPrefix(resp.Warnings[0], `Herald: bfd-profiles[0].echo-mode (line 2): `) {
		t.Errorf("Review: allowed %v, warnings %q", resp.Allowed, resp.Warnings)
	}
}

// An authority that nears its end, or has passed it, is replaced: a new authority, a
// serving certificate it signs, and the caBundle rewritten. While an earlier authority
// is still valid the bundle keeps it, for the replicas still serving what it signed.
func TestAuthorityRotation(t *testing.T) {
	cp := k8stest.Shared(t)
	c := kubernetes.NewForConfigOrDie(cp.Config)
	ns := newNamespace(t, c)
	ctx := context.Background()
	clock := clocktesting.NewFakeClock(time.Now())
	const host = "herald-controller-webhook.herald-system.svc"
	certs := &webhook.Certs{Client: c, Namespace: ns, Secret: "cert", DNSNames: []string{host}, Clock: clock}
	vwc := ns + "-herald-config"
	if _, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, webhook.Registration(vwc, ns, "https://127.0.0.1:1/validate-config"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), vwc, metav1.DeleteOptions{})
	})
	bundle := func(s *corev1.Secret) []*x509.Certificate {
		var out []*x509.Certificate
		for rest := s.Data["ca.crt"]; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				return out
			}
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, cert)
		}
	}
	// check verifies s's serving certificate against s's authority and that the
	// webhook configuration carries s's bundle.
	check := func(s *corev1.Secret) {
		t.Helper()
		b, _ := pem.Decode(s.Data[corev1.TLSCertKey])
		leaf, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(bundle(s)[0])
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, CurrentTime: clock.Now()}); err != nil {
			t.Errorf("the serving certificate does not verify with the current authority: %v", err)
		}
		if _, err := webhook.PublishCA(ctx, c, vwc, s); err != nil {
			t.Fatal(err)
		}
		got, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, vwc, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Webhooks[0].ClientConfig.CABundle) != string(s.Data["ca.crt"]) {
			t.Error("the caBundle is not the Secret's")
		}
	}

	first, _, err := certs.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check(first)
	ca1 := bundle(first)[0]

	// The serving certificate, long expired, is renewed by the same authority while the
	// authority has more than a year left...
	clock.SetTime(ca1.NotAfter.Add(-465 * 24 * time.Hour))
	renewedLeaf, renewed, err := certs.Ensure(ctx)
	if err != nil || !renewed {
		t.Fatalf("Ensure with the serving certificate expired = %v, %v; want renewed", renewed, err)
	}
	if b := bundle(renewedLeaf); len(b) != 1 || !b[0].Equal(ca1) {
		t.Fatalf("the authority changed with more than a year left")
	}
	check(renewedLeaf)
	// ...and once it enters its last year, it is replaced though the serving
	// certificate is fresh (101 days old), the old authority kept in the bundle.
	clock.Step(101 * 24 * time.Hour)
	second, renewed, err := certs.Ensure(ctx)
	if err != nil || !renewed {
		t.Fatalf("Ensure within the authority's last year = %v, %v; want renewed", renewed, err)
	}
	b := bundle(second)
	if len(b) != 2 || b[0].Equal(ca1) || !b[1].Equal(ca1) {
		t.Fatalf("bundle after rotation holds %d certificates (new first: %v), want the new authority then the old", len(b), len(b) > 0 && !b[0].Equal(ca1))
	}
	if !b[0].NotAfter.After(clock.Now().Add(9 * 365 * 24 * time.Hour)) {
		t.Errorf("the new authority ends %s", b[0].NotAfter)
	}
	check(second)
	if _, again, err := certs.Ensure(ctx); err != nil || again {
		t.Fatalf("Ensure right after rotation = %v, %v; want left alone", again, err)
	}

	// Past the end of every authority so far: replaced, and the expired ones dropped.
	clock.SetTime(bundle(second)[0].NotAfter.Add(time.Hour))
	third, renewed, err := certs.Ensure(ctx)
	if err != nil || !renewed {
		t.Fatalf("Ensure past the authority's end = %v, %v; want renewed", renewed, err)
	}
	if b := bundle(third); len(b) != 1 || b[0].Equal(bundle(second)[0]) {
		t.Fatalf("bundle after an expired authority holds %d certificates, want one new", len(b))
	}
	check(third)
}
