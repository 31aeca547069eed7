// Command speaker-bgp is the speaker's BGP process: an embedded GoBGP speaker with BFD
// beside it, started by the speaker (pkg/bgp/process) only while its node has BGP peers,
// and driven over its standard input and output. It is not run by hand.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/heraldlb/herald/pkg/bfd/udp"
	"github.com/heraldlb/herald/pkg/bgp/gobgp"
	"github.com/heraldlb/herald/pkg/bgp/process"
	"github.com/heraldlb/herald/pkg/logging"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "speaker-bgp:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		nodeName   = flag.String("node-name", "", "this node's name, for the log")
		routerID   = flag.String("router-id", "", "BGP router ID: an IPv4 address (required)")
		listenPort = flag.Int("listen-port", 0, "accept BGP connections on this port; 0: only dial out to the peers")
		logLevel   = flag.String("log-level", "info", "debug, info, warn or error")
		logFormat  = flag.String("log-format", "json", "json or text")
	)
	flag.Parse()
	logger, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	logger = logger.With("node", *nodeName)
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(50) // as the speaker: a small live heap
	}
	id, err := netip.ParseAddr(*routerID)
	if err != nil {
		return fmt.Errorf("--router-id %q: not an IP address", *routerID)
	}
	// The speaker stops this process by closing its input, after it withdrew the routes;
	// a signal to the whole process group (a terminal's ^C) must not cut in first.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "herald_bgp"}))
	end := process.NewServer(os.Stdout)
	srv, err := gobgp.New(gobgp.Options{
		RouterID: id, ListenPort: int32(*listenPort), Registerer: reg, OnSession: end.Session,
		Logger: logger.With("component", "bgp"), BFD: udp.Options{Logger: logger.With("component", "bfd")},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	serveErr := end.Serve(os.Stdin, srv, reg)
	cancel() // input closed: withdraw, Cease, exit
	return errors.Join(serveErr, <-done)
}
