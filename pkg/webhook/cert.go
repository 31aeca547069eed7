package webhook

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// Keys of the certificate Secret.
const (
	keyCACert  = "ca.crt"
	keyCAKey   = "ca.key"
	keyTLSCert = corev1.TLSCertKey
	keyTLSKey  = corev1.TLSPrivateKeyKey
)

// Validity of what the controller makes: a long-lived authority that goes into the
// webhook configuration, and a serving certificate it signs, replaced once a third of
// its life is left. The authority is replaced (and the serving certificate with it)
// once it has less than caRenewBefore left, so that it outlives every certificate it
// signs.
const (
	caValidity    = 10 * 365 * 24 * time.Hour
	certValidity  = 365 * 24 * time.Hour
	caRenewBefore = certValidity
)

// Certs keeps the webhook's serving certificate in a Secret: every replica serves what
// the Secret holds; the leader makes it, renews it and publishes the authority.
type Certs struct {
	Client    kubernetes.Interface
	Namespace string
	Secret    string   // the Secret's name
	DNSNames  []string // names the serving certificate is for (the webhook Service's)
	IPs       []net.IP // addresses it is for (a webhook reached by URL)
	Clock     clock.Clock

	current atomic.Pointer[tls.Certificate]
}

func (c *Certs) now() time.Time {
	if c.Clock == nil {
		return time.Now()
	}
	return c.Clock.Now()
}

// GetCertificate serves the certificate last loaded, for tls.Config.
func (c *Certs) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert := c.current.Load(); cert != nil {
		return cert, nil
	}
	return nil, errors.New("no serving certificate loaded yet")
}

// Load takes the serving certificate from the Secret's data.
func (c *Certs) Load(s *corev1.Secret) error {
	cert, err := tls.X509KeyPair(s.Data[keyTLSCert], s.Data[keyTLSKey])
	if err != nil {
		return fmt.Errorf("Secret %s/%s: serving certificate: %w", c.Namespace, c.Secret, err)
	}
	c.current.Store(&cert)
	return nil
}

// Ensure makes the Secret when it is missing and renews its serving certificate when a
// third of its life is left or its names changed; it returns the Secret as it is now
// and whether it changed it.
func (c *Certs) Ensure(ctx context.Context) (*corev1.Secret, bool, error) {
	secrets := c.Client.CoreV1().Secrets(c.Namespace)
	s, err := secrets.Get(ctx, c.Secret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		data, err := c.issue(nil)
		if err != nil {
			return nil, false, err
		}
		s, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: c.Secret, Labels: map[string]string{"app.kubernetes.io/part-of": "herald"}},
			Type:       corev1.SecretTypeTLS, Data: data,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			s, err = secrets.Get(ctx, c.Secret, metav1.GetOptions{})
			return s, false, err
		}
		return s, err == nil, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("read Secret %s/%s: %w", c.Namespace, c.Secret, err)
	}
	if !c.due(s) {
		return s, false, nil
	}
	data, err := c.issue(s.Data)
	if err != nil {
		return nil, false, err
	}
	s = s.DeepCopy()
	s.Data = data
	s, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return nil, false, fmt.Errorf("renew the webhook certificate in Secret %s/%s: %w", c.Namespace, c.Secret, err)
	}
	return s, true, nil
}

// due reports whether the Secret's serving certificate must be (re)issued.
func (c *Certs) due(s *corev1.Secret) bool {
	cert, err := parseCert(s.Data[keyTLSCert])
	if err != nil {
		return true
	}
	if _, err := tls.X509KeyPair(s.Data[keyTLSCert], s.Data[keyTLSKey]); err != nil {
		return true
	}
	ca, err := parseCert(s.Data[keyCACert])
	if err != nil || cert.CheckSignatureFrom(ca) != nil || c.caDue(ca) {
		return true
	}
	if c.now().After(cert.NotAfter.Add(-certValidity / 3)) {
		return true
	}
	for _, n := range c.DNSNames {
		if cert.VerifyHostname(n) != nil {
			return true
		}
	}
	for _, ip := range c.IPs {
		if cert.VerifyHostname(ip.String()) != nil {
			return true
		}
	}
	return false
}

// caDue reports whether the authority must be replaced: it has expired, is not yet
// valid, or has less than caRenewBefore left.
func (c *Certs) caDue(ca *x509.Certificate) bool {
	now := c.now()
	return now.Before(ca.NotBefore) || now.After(ca.NotAfter.Add(-caRenewBefore))
}

// parseCert parses the first certificate of p (the current one, in a bundle).
func parseCert(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// issue signs a new serving certificate with the authority in old (made anew when old
// has none that works) and returns the Secret's new data.
func (c *Certs) issue(old map[string][]byte) (map[string][]byte, error) {
	now := c.now()
	caCert, caKey, err := loadCA(old)
	if err == nil && c.caDue(caCert) {
		err = errors.New("the authority expires")
	}
	data := map[string][]byte{}
	if err != nil {
		caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: "herald-webhook-ca"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(caValidity),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		if caCert, err = x509.ParseCertificate(der); err != nil {
			return nil, err
		}
		keyDER, err := x509.MarshalECPrivateKey(caKey)
		if err != nil {
			return nil, err
		}
		// The bundle keeps the earlier authorities that are still valid: replicas serve
		// the certificate they signed until they load the new one (Server.Reload), and
		// the API server must trust both meanwhile.
		data[keyCACert] = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), stillValid(old[keyCACert], now)...)
		data[keyCAKey] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	} else {
		data[keyCACert], data[keyCAKey] = stillValid(old[keyCACert], now), old[keyCAKey]
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: firstOr(c.DNSNames, "herald-webhook")},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(certValidity),
		DNSNames: c.DNSNames, IPAddresses: c.IPs,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	data[keyTLSCert] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	data[keyTLSKey] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return data, nil
}

// stillValid returns the certificates of the PEM bundle p that are valid at now.
func stillValid(p []byte, now time.Time) []byte {
	var out []byte
	for {
		var b *pem.Block
		b, p = pem.Decode(p)
		if b == nil {
			return out
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil || now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
			continue
		}
		out = append(out, pem.EncodeToMemory(b)...)
	}
}

func loadCA(d map[string][]byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := parseCert(d[keyCACert])
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(d[keyCAKey])
	if b == nil {
		return nil, nil, errors.New("no PEM key")
	}
	key, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("the authority's key does not match its certificate")
	}
	return cert, key, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

// PublishCA writes the Secret's authority into every webhook of the
// ValidatingWebhookConfiguration name, where it differs; it reports whether it wrote.
func PublishCA(ctx context.Context, client kubernetes.Interface, name string, s *corev1.Secret) (bool, error) {
	vwcs := client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	vwc, err := vwcs.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("read ValidatingWebhookConfiguration %s: %w", name, err)
	}
	ca := s.Data[keyCACert]
	changed := false
	vwc = vwc.DeepCopy()
	for i := range vwc.Webhooks {
		if !bytes.Equal(vwc.Webhooks[i].ClientConfig.CABundle, ca) {
			vwc.Webhooks[i].ClientConfig.CABundle = ca
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if _, err := vwcs.Update(ctx, vwc, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("write the authority into ValidatingWebhookConfiguration %s: %w", name, err)
	}
	return true, nil
}
