package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heraldlb/herald/pkg/logging"
)

// Server serves the Validator over TLS with the certificate of Certs.
type Server struct {
	Validator *Validator
	Certs     *Certs
	Log       *slog.Logger
	// Reload is how often the Secret is read again for a renewed certificate; default 30s.
	Reload time.Duration
	// Timeouts bound what one connection may hold the server for; zero fields take
	// DefaultTimeouts'.
	Timeouts Timeouts
}

// Timeouts bound a connection to the webhook, so that a client that sends slowly or
// not at all (slow loris) cannot hold connections open.
type Timeouts struct {
	ReadHeader time.Duration // TLS handshake and request headers
	Read       time.Duration // the whole request, body included
	Write      time.Duration // from the end of the request headers to the end of the answer
	Idle       time.Duration // a kept-alive connection between requests
}

// DefaultTimeouts suit the API server, the webhook's one client: it sends an
// AdmissionReview (at most a few MiB) at once over a kept-alive connection and waits
// at most 30 seconds (timeoutSeconds, 5 in config/controller.yaml) for the answer.
var DefaultTimeouts = Timeouts{ReadHeader: 5 * time.Second, Read: 15 * time.Second, Write: 20 * time.Second, Idle: 90 * time.Second}

func (t Timeouts) orDefault() Timeouts {
	pick := func(v, def time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return def
	}
	d := DefaultTimeouts
	return Timeouts{pick(t.ReadHeader, d.ReadHeader), pick(t.Read, d.Read), pick(t.Write, d.Write), pick(t.Idle, d.Idle)}
}

// httpServer is the HTTPS server of the webhook, without its listener.
func (s *Server) httpServer(log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle(Path, s.Validator)
	t := s.Timeouts.orDefault()
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    64 << 10, // an AdmissionReview's headers are a few hundred bytes
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.Certs.GetCertificate},
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Serve answers on ln until ctx ends. It serves once the Secret holds a certificate
// (the leader makes it) and picks up a renewed one within Reload.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := logging.OrDiscard(s.Log)
	reload := s.Reload
	if reload == 0 {
		reload = 30 * time.Second
	}
	srv := s.httpServer(log)
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	t := time.NewTicker(reload)
	defer t.Stop()
	loaded := ""
	waiting := time.NewTicker(time.Second) // until a first certificate is loaded
	defer waiting.Stop()
	for {
		sec, err := s.Certs.Client.CoreV1().Secrets(s.Certs.Namespace).Get(ctx, s.Certs.Secret, metav1.GetOptions{})
		if err == nil && sec.ResourceVersion != loaded {
			if err := s.Certs.Load(sec); err != nil {
				log.Warn("webhook certificate not usable", "err", err)
			} else {
				loaded = sec.ResourceVersion
				waiting.Stop()
				log.Info("webhook serving certificate loaded", "secret", s.Certs.Namespace+"/"+s.Certs.Secret)
			}
		}
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := srv.Shutdown(shutdown)
			if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
				err = e
			}
			return err
		case <-t.C:
		case <-waiting.C:
		}
	}
}

// Maintain, run by the leader, keeps the serving certificate made and current and its
// authority in the ValidatingWebhookConfiguration vwc, checking every interval. A
// missing configuration (the webhook is optional) is logged, not fatal.
func Maintain(ctx context.Context, c *Certs, vwc string, interval time.Duration, log *slog.Logger) error {
	log = logging.OrDiscard(log)
	t := time.NewTicker(interval)
	defer t.Stop()
	said := ""
	for {
		sec, renewed, err := c.Ensure(ctx)
		if err == nil {
			if renewed {
				log.Info("webhook serving certificate issued", "secret", c.Namespace+"/"+c.Secret)
			}
			var wrote bool
			if wrote, err = PublishCA(ctx, c.Client, vwc, sec); wrote {
				log.Info("webhook authority written", "validatingWebhookConfiguration", vwc)
			}
		}
		if err != nil && err.Error() != said && ctx.Err() == nil {
			log.Warn("admission webhook not maintained; edits of the ConfigMap are checked by the controller only", "err", err)
		}
		if err != nil {
			said = err.Error()
		} else {
			said = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
