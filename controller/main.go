// Command controller is Herald's IP controller: it gives LoadBalancer Services an address
// from the pools in Herald's ConfigMap and writes it to their status.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/controller"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/apiconn"
	"github.com/heraldlb/herald/pkg/k8s/leader"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/metrics"
	"github.com/heraldlb/herald/pkg/webhook"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kubeconfig   = flag.String("kubeconfig", "", "kubeconfig file; empty means the in-cluster service account")
		cmNamespace  = flag.String("config-namespace", "herald-system", "namespace of the configuration ConfigMap (and of the leader Lease)")
		cmName       = flag.String("config-name", "config", "name of the configuration ConfigMap")
		cmKey        = flag.String("config-key", "config", "key in the ConfigMap holding the configuration")
		class        = flag.String("load-balancer-class", k8s.DefaultLoadBalancerClass, "spec.loadBalancerClass served besides none; Services of any other class are never touched")
		workers      = flag.Int("workers", 8, "Services synced in parallel")
		metricsAddr  = flag.String("metrics-addr", ":7472", "address serving /metrics, /healthz and /readyz; empty disables")
		leaderElect  = flag.Bool("leader-elect", true, "run only while holding the Lease, so replicas can stand by")
		leaseName    = flag.String("lease-name", "herald-controller", "name of the leader Lease")
		leaseDur     = flag.Duration("lease-duration", leader.DefaultTimings.LeaseDuration, "how long a leader's Lease lasts without renewal")
		renewDl      = flag.Duration("renew-deadline", leader.DefaultTimings.RenewDeadline, "how long the leader tries to renew before giving up")
		retryPeriod  = flag.Duration("retry-period", leader.DefaultTimings.RetryPeriod, "how often a standby tries to take the Lease")
		mlSecret     = flag.String("memberlist-secret", "memberlist", "Secret (in --config-namespace) holding the speakers' gossip key; created with a random key if missing; empty: leave it alone")
		qps          = flag.Float64("kube-api-qps", 0, "client-side limit on API requests per second; 0 leaves flow control to the API server (priority and fairness)")
		burst        = flag.Int("kube-api-burst", 0, "client-side burst of API requests, with --kube-api-qps")
		apiHealth    = flag.Duration("api-health-check", apiconn.DefaultHealthCheck, apiconn.HealthCheckUsage)
		logLevel     = flag.String("log-level", "info", "debug, info, warn or error")
		logFormat    = flag.String("log-format", "json", "json or text")
		resyncPeriod = flag.Duration("resync-period", 10*time.Minute, "how often every Service is checked again")
		whAddr       = flag.String("webhook-addr", ":9443", "address serving the validating admission webhook for the configuration (HTTPS); empty disables")
		whConfig     = flag.String("webhook-configuration", "herald-config", "ValidatingWebhookConfiguration whose caBundle the leader keeps current")
		whSecret     = flag.String("webhook-secret", "herald-webhook-cert", "Secret (in --config-namespace) holding the webhook's serving certificate, made and renewed by the leader")
		whNames      = flag.String("webhook-dns-names", "herald-controller-webhook.herald-system.svc", "comma-separated names the webhook's certificate is for (its Service's)")
		whIPs        = flag.String("webhook-ips", "", "comma-separated addresses the webhook's certificate is for, when it is reached by URL")
	)
	flag.Parse()

	logger, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	k8s.RouteKlog(logger)
	if err := apiconn.HealthCheck(*apiHealth); err != nil {
		return fmt.Errorf("--api-health-check: %w", err)
	}
	cfg, err := k8s.RESTConfig(*kubeconfig, float32(*qps), *burst)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctrl, err := controller.New(controller.Options{
		Client: client, Config: k8s.ConfigRef{Namespace: *cmNamespace, Name: *cmName, Key: *cmKey},
		LoadBalancerClass: *class, Workers: *workers, ResyncPeriod: *resyncPeriod,
		Logger: logger, Registerer: reg,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	var leading atomic.Bool
	// Until the gossip key is known to exist, the controller waits for the API server
	// (logged once, then at most every minute) and says so on /readyz; it never exits on
	// it. Nothing else waits for the key: the informers and the Lease retry on their own.
	var waiting atomic.Pointer[error]
	if *mlSecret != "" {
		waiting.Store(ptr(errors.New("the speakers' gossip key not ensured yet")))
		core := k8s.CoreOf(client.CoreV1().RESTClient(), client.DiscoveryV1().RESTClient())
		w := k8s.Waiter{What: "the speakers' gossip key", Logger: logger, Waiting: func(err error) {
			if err != nil {
				waiting.Store(&err)
			}
		}}
		g.Go(func() error {
			err := w.Do(ctx, func(ctx context.Context) error {
				created, err := k8s.EnsureGossipKey(ctx, core, *cmNamespace, *mlSecret)
				if created {
					logger.Info("created the speakers' gossip key", "secret", *cmNamespace+"/"+*mlSecret)
				}
				return err
			})
			if err == nil {
				waiting.Store(nil)
			}
			return nil // ended with ctx: so does everything else
		})
	}
	var certs *webhook.Certs
	if *whAddr != "" {
		if certs, err = serveWebhook(ctx, g, client, k8s.ConfigRef{Namespace: *cmNamespace, Name: *cmName, Key: *cmKey}, *class,
			*whAddr, *whSecret, *whNames, *whIPs, logger.With("component", "webhook")); err != nil {
			return err
		}
	}
	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("listen on --metrics-addr %q: %w", *metricsAddr, err)
		}
		srv := &metrics.Server{Gatherer: reg, Ready: func() error {
			if err := waiting.Load(); err != nil {
				return *err
			}
			if *leaderElect && !leading.Load() {
				return nil // a standby replica is ready to take over
			}
			return ctrl.Ready()
		}}
		g.Go(func() error { return srv.Serve(ctx, ln) })
	}
	g.Go(func() error {
		defer stop() // the controller ending ends the process
		if !*leaderElect {
			leading.Store(true)
			return ctrl.Run(ctx)
		}
		id, err := identity()
		if err != nil {
			return err
		}
		timings := leader.Timings{LeaseDuration: *leaseDur, RenewDeadline: *renewDl, RetryPeriod: *retryPeriod}
		return leader.Run(ctx, client, *cmNamespace, *leaseName, id, timings, logger, func(ctx context.Context) error {
			leading.Store(true)
			if certs == nil {
				return ctrl.Run(ctx)
			}
			lg, ctx := errgroup.WithContext(ctx)
			lg.Go(func() error {
				return webhook.Maintain(ctx, certs, *whConfig, time.Minute, logger.With("component", "webhook"))
			})
			lg.Go(func() error { return ctrl.Run(ctx) })
			return lg.Wait()
		})
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	logger.Info("controller stopped")
	return err
}

func ptr[T any](v T) *T { return &v }

func identity() (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", err
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return host + "_" + hex.EncodeToString(b), nil
}

// serveWebhook starts serving the admission webhook in g, in every replica: the same
// rule the controller applies, against the addresses Services hold (from a cache of
// their own). It returns the certificates, which the leader maintains.
func serveWebhook(ctx context.Context, g *errgroup.Group, client kubernetes.Interface, ref k8s.ConfigRef, class, addr, secret, names, ips string, logger *slog.Logger) (*webhook.Certs, error) {
	certs := &webhook.Certs{Client: client, Namespace: ref.Namespace, Secret: secret}
	for _, n := range strings.Split(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			certs.DNSNames = append(certs.DNSNames, n)
		}
	}
	for _, s := range strings.Split(ips, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("--webhook-ips: %q is not an IP address", s)
		}
		certs.IPs = append(certs.IPs, ip)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --webhook-addr %q: %w", addr, err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(k8s.Strip))
	svcs := factory.Core().V1().Services()
	svcs.Informer() // registered before Start
	ref = ref.WithDefaults()
	v := &webhook.Validator{Namespace: ref.Namespace, Name: ref.Name, Key: ref.Key, Log: logger, Held: func() []config.Held {
		list, _ := svcs.Lister().List(labels.Everything())
		return k8s.HeldAddresses(list, class)
	}}
	srv := &webhook.Server{Validator: v, Certs: certs, Log: logger}
	g.Go(func() error {
		factory.Start(ctx.Done())
		defer factory.Shutdown()
		factory.WaitForCacheSync(ctx.Done())
		return srv.Serve(ctx, ln)
	})
	return certs, nil
}
