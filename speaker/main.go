// Command speaker is Herald's per-node daemon: it finds the other speakers, elects which
// node announces each Service address, announces the ones this node owns (ARP/NDP or
// BGP) and forwards their traffic with IPVS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/bgp/process"
	"github.com/heraldlb/herald/pkg/forward/ipvs"
	"github.com/heraldlb/herald/pkg/k8s"
	"github.com/heraldlb/herald/pkg/k8s/apiconn"
	"github.com/heraldlb/herald/pkg/layer2/announce"
	"github.com/heraldlb/herald/pkg/liveness"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/members"
	"github.com/heraldlb/herald/pkg/metrics"
	relaykernel "github.com/heraldlb/herald/pkg/relay/kernel"
	"github.com/heraldlb/herald/pkg/speaker"
)

// defaultGCPercent is the speaker's garbage collection target when GOGC is unset.
const defaultGCPercent = 50

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "speaker:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kubeconfig   = flag.String("kubeconfig", "", "kubeconfig file; empty means the in-cluster service account")
		nodeName     = flag.String("node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, from the downward API)")
		cmNamespace  = flag.String("config-namespace", "herald-system", "namespace of the configuration ConfigMap and the memberlist Secret")
		cmName       = flag.String("config-name", "config", "name of the configuration ConfigMap")
		cmKey        = flag.String("config-key", "config", "key in the ConfigMap holding the configuration")
		class        = flag.String("load-balancer-class", k8s.DefaultLoadBalancerClass, "spec.loadBalancerClass served besides none")
		metricsAddr  = flag.String("metrics-addr", ":7473", "address serving /metrics, /healthz and /readyz; empty disables")
		useML        = flag.Bool("memberlist", true, "find the other speakers with memberlist; false: a node's Ready condition stands in for its speaker")
		mlAddr       = flag.String("memberlist-bind-addr", "", "address memberlist binds and advertises (default: the node's InternalIP)")
		mlPort       = flag.Int("memberlist-port", 7946, "memberlist port, the same on every node")
		mlSecret     = flag.String("memberlist-secret", "memberlist", "Secret (in --config-namespace) whose key secretkey encrypts gossip and authenticates the failure detector; empty gossips in the clear and turns the failure detector off")
		probe        = flag.Duration("memberlist-probe-interval", members.DefaultProbeInterval, "how often each speaker probes a random peer")
		probeTO      = flag.Duration("memberlist-probe-timeout", members.DefaultProbeTimeout, "how long a probe waits for an answer")
		suspicion    = flag.Int("memberlist-suspicion-mult", members.DefaultSuspicionMult, "suspicion timeout multiplier: higher is slower to declare a speaker dead, and safer on busy nodes")
		joinWait     = flag.Duration("memberlist-join-wait", 5*time.Second, "announce nothing after start until memberlist has joined another speaker, or this long has passed (alone, a speaker claims every address)")
		livePort     = flag.Int("liveness-port", 7947, "TCP port of the failure detector's mesh, the same on every node (0 turns it off: memberlist alone detects deaths; it is off too without a gossip key)")
		liveInterval = flag.Duration("liveness-interval", liveness.DefaultInterval, "heartbeat interval of the failure detector: a crash is known within a round trip, a silent node after --liveness-timeout")
		liveTimeout  = flag.Duration("liveness-timeout", liveness.DefaultTimeout, "silence after which a peer is dead (longer is slower to fail over from a dead node, and safer on loaded or lossy networks)")
		liveMesh     = flag.Int("liveness-mesh", liveness.DefaultMesh, "up to this many peers every speaker watches every other (a full mesh); beyond, each watches --liveness-monitors neighbours on each side of a ring and reports deaths to the others through memberlist, which check before they believe")
		liveMonitors = flag.Int("liveness-monitors", liveness.DefaultMonitors, "beyond --liveness-mesh, how many neighbours on each side of the ring each speaker watches (more costs connections, fewer risks a death learned only from memberlist)")
		handover     = flag.Duration("handover-timeout", time.Second, "on SIGTERM, how long to wait for the other speakers to take this node's addresses over before it stops answering")
		useBGP       = flag.Bool("bgp", true, "speak BGP to the peers in the configuration that select this node")
		routerID     = flag.String("bgp-router-id", "", "BGP router ID (default: the node's IPv4 InternalIP)")
		bgpPort      = flag.Int("bgp-listen-port", 0, "accept BGP connections on this port; 0: only dial out to the peers")
		bgpBinary    = flag.String("bgp-binary", "", "the BGP process, run while this node has BGP peers (default: speaker-bgp beside this executable)")
		qps          = flag.Float64("kube-api-qps", 0, "client-side limit on API requests per second; 0 leaves flow control to the API server")
		apiHealth    = flag.Duration("api-health-check", apiconn.DefaultHealthCheck, apiconn.HealthCheckUsage)
		logLevel     = flag.String("log-level", "info", "debug, info, warn or error")
		logFormat    = flag.String("log-format", "json", "json or text")
		relayPrio    = flag.Int("relay-rule-priority", relaykernel.DefaultPriority, "priority of the policy routing rules relay-local writes, from 2 to 32764 (before the main table's 32766; its gate rules take the priority before, their landing the one after; rules at it that point into the relay's tables are Herald's)")
		relayTable   = flag.Int("relay-first-table", relaykernel.DefaultFirstTable, "first of the routing tables relay-local may use, one per node it relays to")
		prepare      = flag.Bool("prepare-forwarding", false, "set the sysctls IPVS forwarding needs and exit (the DaemonSet's privileged init container; the speaker itself then needs no write access to /proc/sys)")
	)
	flag.Parse()
	logger, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	if _, set := os.LookupEnv("GOGC"); !set {
		// The live heap is a few MiB (the stripped caches, the announcer's tables), so
		// collecting at half again as much, not twice, costs little CPU and keeps every
		// node's speaker about 3 MiB smaller. GOGC set in the environment wins.
		debug.SetGCPercent(defaultGCPercent)
	}
	if *prepare {
		return prepareForwarding(logger)
	}
	if *nodeName == "" {
		return errors.New("no node name: set --node-name or $NODE_NAME")
	}
	logger = logger.With("node", *nodeName)
	k8s.RouteKlog(logger)
	if err := apiconn.HealthCheck(*apiHealth); err != nil {
		return fmt.Errorf("--api-health-check: %w", err)
	}
	cfg, err := k8s.RESTConfig(*kubeconfig, float32(*qps), 0)
	if err != nil {
		return err
	}
	// The speaker runs in the node's network namespace: when a link going down takes the
	// NAT state of its API connections, they are replaced as soon as the API server is
	// reachable again (package apiconn says why).
	apiConns := apiconn.Track(cfg)
	client, err := k8s.NewCore(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The components run in g; /metrics, /healthz and /readyz first, so that a speaker
	// that waits for the API server says why it is not ready. The speaker stops first
	// (handing its addresses over while it still answers); the components under it stop
	// after it, or when one of them fails.
	components, stopComponents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopComponents()
	g, gctx := errgroup.WithContext(components)
	var spk *speaker.Speaker
	var started atomic.Pointer[speaker.Speaker] // spk, once made
	var waiting atomic.Pointer[error]           // why start-up waits, while it does
	waiting.Store(ptr(errors.New("starting")))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var bgpMetrics atomic.Pointer[metrics.Bounded] // the BGP process's, once it is made
	gatherer := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		gs := prometheus.Gatherers{reg}
		if b := bgpMetrics.Load(); b != nil {
			gs = append(gs, b) // bounded: a hung BGP process does not hold the scrape
		}
		return gs.Gather()
	})
	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("listen on --metrics-addr %q: %w", *metricsAddr, err)
		}
		srv := &metrics.Server{Gatherer: gatherer, Ready: func() error {
			if s := started.Load(); s != nil {
				return s.Ready()
			}
			if err := waiting.Load(); err != nil {
				return *err
			}
			return errors.New("starting")
		}}
		g.Go(func() error { return srv.Serve(gctx, ln) })
	}
	// A start-up step that needs the API server waits for it (logged once, then at most
	// every minute), and never ends the process: the speaker is not ready meanwhile.
	apiWait := func(what string) k8s.Waiter {
		return k8s.Waiter{What: what, Logger: logger, Waiting: func(err error) {
			if err != nil {
				waiting.Store(&err)
			}
		}}
	}
	stopped := func() error { // ended while waiting: no error
		stopComponents()
		_ = g.Wait()
		logger.Info("speaker stopped")
		return nil
	}

	if w, err := apiconn.NewLinkWatch(apiConns, logger.With("component", "api"), reg); err != nil {
		logger.Warn("cannot watch links: API connections broken by a link going down are replaced only by the health check", "err", err, "after", *apiHealth)
	} else {
		g.Go(func() error { w.Run(gctx); return nil })
	}
	var runBGP func(context.Context) error
	announcer := announce.New(announce.Options{Logger: logger.With("component", "layer2"), Registerer: reg, Ignore: []string{ipvs.LinkName}})
	opts := speaker.Options{
		Client: client, NodeName: *nodeName, Config: k8s.ConfigRef{Namespace: *cmNamespace, Name: *cmName, Key: *cmKey},
		LoadBalancerClass: *class, Layer2: announcer, Logger: logger, Registerer: reg,
		JoinWait: *joinWait, HandoverTimeout: *handover,
	}
	if kernel, err := ipvs.OpenLinux(); err != nil {
		opts.ForwardErr = err // the speaker says so: log, metric, Event on the Node
	} else {
		defer kernel.Close()
		if opts.Forward, err = ipvs.New(kernel, ipvs.Options{
			Owns:   func(a netip.Addr) bool { return spk.Owns(a) },
			Logger: logger.With("component", "forward"), Registerer: reg,
		}); err != nil {
			return err
		}
	}
	relayer, err := relaykernel.New(relaykernel.Options{Priority: *relayPrio, FirstTable: *relayTable})
	if err != nil {
		opts.RelayErr = err // said when the configuration asks for relay-local
	} else {
		opts.Relay = relayer
	}
	if *useBGP {
		rid := *routerID
		if rid == "" {
			if rid, err = internalIP(ctx, client, *nodeName, true, apiWait("the node's address (for the BGP router ID)")); err != nil {
				return stopped()
			}
		}
		id, err := netip.ParseAddr(rid)
		if err != nil || !id.Is4() {
			return fmt.Errorf("--bgp-router-id %q: not an IPv4 address", rid)
		}
		path := *bgpBinary
		if path == "" {
			if path, err = beside("speaker-bgp"); err != nil {
				return err
			}
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("the BGP process (--bgp-binary; --bgp=false runs without BGP): %w", err)
		}
		bgpProc, err := process.New(process.Options{
			Path: path,
			Args: []string{"--node-name", *nodeName, "--router-id", id.String(), "--listen-port", strconv.Itoa(*bgpPort),
				"--log-level", *logLevel, "--log-format", *logFormat},
			OnSession: func(e bgp.SessionEvent) { spk.SessionChanged(e) }, // sessions open only once spk runs
			Logger:    logger.With("component", "bgp"),
		})
		if err != nil {
			return err
		}
		opts.BGP = bgpProc
		runBGP = bgpProc.Run
		bgpMetrics.Store(&metrics.Bounded{Gatherer: bgpProc, Timeout: time.Second})
	}
	var ml *members.Members
	var detector *liveness.Detector
	if *useML {
		bind := *mlAddr
		if bind == "" {
			if bind, err = internalIP(ctx, client, *nodeName, false, apiWait("the node's address (for memberlist)")); err != nil {
				return stopped()
			}
		}
		var key []byte
		if *mlSecret == "" {
			logger.Warn("memberlist gossip is not encrypted (--memberlist-secret is empty)")
		} else {
			if key, err = k8s.WaitGossipKey(ctx, client, *cmNamespace, *mlSecret, apiWait("the memberlist key")); err != nil {
				return stopped()
			}
		}
		var deliver func([]byte) // the failure detector's, once made
		mlConfig := members.Config{
			OnMessage: func(msg []byte) {
				if deliver != nil {
					deliver(msg)
				}
			},
			Name: *nodeName, BindAddr: bind, BindPort: *mlPort, AdvertiseAddr: bind, Key: key,
			Meta:          speaker.MemberMeta{IPVS: opts.Forward != nil}.Encode(),
			ProbeInterval: *probe, ProbeTimeout: *probeTO, SuspicionMult: *suspicion,
			Logger: logger.With("component", "memberlist"),
			Peers: func() []string {
				var out []string
				for _, ip := range spk.NodeAddresses() {
					if bindIP, err := netip.ParseAddr(bind); err == nil && ip.Is4() != bindIP.Is4() {
						continue // memberlist listens on one family: the bind address's
					}
					out = append(out, net.JoinHostPort(ip.String(), strconv.Itoa(*mlPort)))
				}
				return out
			},
		}
		if ml, err = members.New(mlConfig); err != nil {
			return err
		}
		opts.Members = ml
		liveOn := metrics.NewLivenessEnabled(reg)
		switch {
		case *livePort == 0:
			logger.Info("failure detector off (--liveness-port=0): memberlist alone detects deaths")
		case len(key) == 0:
			// Unauthenticated, anyone reaching the port could make a speaker leave or keep
			// a dead one alive: memberlist alone, and said so.
			logger.Warn("failure detector off: no gossip key (--memberlist-secret is empty), and it does not run unauthenticated; memberlist alone detects deaths, in seconds rather than milliseconds")
		default:
			if detector, err = liveness.New(liveness.Config{
				Name: *nodeName, Listen: net.JoinHostPort(bind, strconv.Itoa(*livePort)), Key: key,
				Interval: *liveInterval, Timeout: *liveTimeout, Logger: logger.With("component", "liveness"), Registerer: reg,
				Mesh: *liveMesh, Monitors: *liveMonitors, Broadcast: ml.Broadcast,
				Send: func(to string, msg []byte) { _ = ml.Send(to, msg) },
				Peers: func() map[string]string {
					out := map[string]string{}
					for name, ip := range ml.AliveAddrs() {
						out[name] = net.JoinHostPort(ip.String(), strconv.Itoa(*livePort))
					}
					return out
				},
			}); err != nil {
				return err
			}
			opts.Liveness = detector
			deliver = func(msg []byte) { detector.Deliver(ctx, msg) }
			liveOn.Set(1)
		}
	}
	if spk, err = speaker.New(opts); err != nil {
		return err
	}

	started.Store(spk)
	spkCtx, stopSpeaker := context.WithCancel(ctx)
	defer context.AfterFunc(gctx, stopSpeaker)()
	if ml != nil {
		g.Go(func() error { return ml.Run(gctx) })
	}
	if detector != nil {
		g.Go(func() error { return detector.Run(gctx) })
		g.Go(func() error {
			// This node's link back up: dial the peers at once, not at TCP's pace.
			w := &liveness.LinkWatcher{Up: detector.Redial, Logger: logger.With("component", "liveness")}
			if err := w.Run(gctx); err != nil {
				logger.Warn("link changes not watched; the detector redials on its own", "err", err)
			}
			return nil
		})
	}
	if relayer != nil {
		g.Go(func() error {
			// A link going down takes the relay's routes with it: set them again at once.
			if err := relayer.Watch(gctx, nil, spk.RelayKernelChanged); err != nil {
				logger.Warn("route changes not watched; the relay is checked every resync", "err", err)
			}
			return nil
		})
	}
	g.Go(func() error { return announcer.Run(gctx) })
	if runBGP != nil {
		g.Go(func() error { return runBGP(gctx) })
	}
	g.Go(func() error {
		defer stopComponents()
		return spk.Run(spkCtx)
	})
	err = g.Wait()
	logger.Info("speaker stopped")
	return err
}

// prepareForwarding loads IPVS (asking for its netlink family makes the kernel load the
// module) and sets the sysctls forwarding needs. A node without IPVS is not an error:
// the speaker reports it and the node does not announce pools that forward.
func prepareForwarding(logger *slog.Logger) error {
	k, err := ipvs.OpenLinux()
	if err != nil {
		logger.Warn("IPVS unavailable; this node will not forward", "err", err)
		return nil
	}
	k.Close()
	if err := ipvs.Sysctls(); err != nil {
		return err
	}
	logger.Info("forwarding sysctls set")
	return nil
}

// beside returns the path of the executable name in this one's directory.
func beside(name string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding %s beside this executable (or set --bgp-binary): %w", name, err)
	}
	return filepath.Join(filepath.Dir(self), name), nil
}

// internalIP returns the node's InternalIP from its Node object (an IPv4 one when v4),
// waiting with w while the API server does not answer or the Node has none yet; it
// fails only when ctx ends.
func internalIP(ctx context.Context, client *k8s.Core, node string, v4 bool, w k8s.Waiter) (string, error) {
	var out string
	err := w.Do(ctx, func(ctx context.Context) error {
		n := &corev1.Node{}
		if err := client.Get(ctx, "", node, n); err != nil {
			return fmt.Errorf("read Node %s for its address (or set --memberlist-bind-addr): %w", node, err)
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if ip, ok := k8s.NodeAddr(a.Address); ok && (!v4 || ip.Is4()) {
					out = ip.String()
					return nil
				}
			}
		}
		return fmt.Errorf("node %s has no suitable InternalIP; set --memberlist-bind-addr or --bgp-router-id", node)
	})
	return out, err
}

func ptr[T any](v T) *T { return &v }
