package webhook

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/heraldlb/herald/pkg/logging"
)

// A client that sends slowly, or nothing, is cut off by the webhook's timeouts instead
// of holding a connection (slow loris); a client that sends at once is answered.
func TestSlowClientsAreCut(t *testing.T) {
	certs := &Certs{Namespace: "herald-system", Secret: "cert", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	data, err := certs.issue(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.Load(&corev1.Secret{Data: data}); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(data[keyCACert])
	s := &Server{
		Validator: &Validator{Namespace: "herald-system", Name: "config", Key: "config"},
		Certs:     certs,
		Timeouts:  Timeouts{ReadHeader: 200 * time.Millisecond, Read: 400 * time.Millisecond, Write: time.Second, Idle: 300 * time.Millisecond},
	}
	srv := s.httpServer(logging.OrDiscard(nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	dialTLS := func(t *testing.T) *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	const review = `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","kind":{"kind":"Secret"},"operation":"CREATE"}}`

	tests := []struct {
		name string
		open func(t *testing.T) net.Conn
		// dribble sends the next byte of a request that never ends; nil sends nothing.
		dribble func(c net.Conn) error
	}{
		{"silent before the TLS handshake", func(t *testing.T) net.Conn {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			return c
		}, nil},
		{"headers a byte at a time", func(t *testing.T) net.Conn {
			c := dialTLS(t)
			if _, err := io.WriteString(c, "POST "+Path+" HTTP/1.1\r\nHost: webhook\r\n"); err != nil {
				t.Fatal(err)
			}
			return c
		}, func(c net.Conn) error { _, err := io.WriteString(c, "X"); return err }},
		{"body a byte at a time", func(t *testing.T) net.Conn {
			c := dialTLS(t)
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", Path); err != nil {
				t.Fatal(err)
			}
			return c
		}, func(c net.Conn) error { _, err := io.WriteString(c, " "); return err }},
		{"idle after an answer", func(t *testing.T) net.Conn {
			c := dialTLS(t)
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", Path, len(review), review); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"allowed":true`) {
				t.Fatalf("a prompt request: %s %s", resp.Status, body)
			}
			return c
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.open(t)
			start := time.Now()
			// Without timeouts the server would hold the connection for ever; with
			// them it closes it well within this bound.
			const bound = 10 * time.Second
			buf := make([]byte, 512)
			for {
				if time.Since(start) > bound {
					t.Fatalf("the connection is still open after %s", bound)
				}
				if tt.dribble != nil {
					if err := tt.dribble(c); err != nil {
						return // the server closed it: writes fail
					}
				}
				_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				_, err := c.Read(buf)
				if err == nil {
					continue // an answer (408, 400) before the close
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue
				}
				t.Logf("closed by the server after %s: %v", time.Since(start).Round(time.Millisecond), err)
				return
			}
		})
	}
}
