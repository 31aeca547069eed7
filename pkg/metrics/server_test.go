package metrics

import (
	"context"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/pkg/ipam"
)

func TestServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewController(reg, func() []ipam.PoolStats {
		return []ipam.PoolStats{{Pool: "default", Family: ipam.IPv6, Capacity: new(big.Int).Lsh(big.NewInt(1), 64), InUse: 3}}
	})
	m.Allocations.WithLabelValues("assigned").Inc()
	var ready atomic.Bool
	srv := &Server{Gatherer: reg, Ready: func() error {
		if !ready.Load() {
			return errors.New("caches not synced")
		}
		return nil
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "caches not synced") {
		t.Errorf("/readyz before ready: %d %q", code, body)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`herald_pool_capacity_addresses{family="IPv6",pool="default"} 1.8446744073709552e+19`,
		`herald_pool_in_use_addresses{family="IPv6",pool="default"} 3`,
		`herald_controller_allocations_total{result="assigned"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
