package metrics

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type stuckGatherer struct {
	calls   atomic.Int32
	release chan struct{}
}

func (g *stuckGatherer) Gather() ([]*dto.MetricFamily, error) {
	g.calls.Add(1)
	<-g.release
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_test_other", Help: "test"}))
	return reg.Gather()
}

// A Gatherer that hangs costs a scrape at most Timeout, and the rest of the scrape is
// served; scrapes meanwhile start no second gathering; once it answers, its metrics
// come back.
func TestBoundedGatherer(t *testing.T) {
	stuck := &stuckGatherer{release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_test_gauge", Help: "test"})
	reg.MustRegister(g)
	all := prometheus.Gatherers{reg, &Bounded{Gatherer: stuck, Timeout: 50 * time.Millisecond}}
	for range 3 {
		start := time.Now()
		mfs, err := all.Gather()
		if err != nil || len(mfs) != 1 || mfs[0].GetName() != "herald_test_gauge" {
			t.Fatalf("scrape with a hung part = %v, %v; want the rest", mfs, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("a scrape took %s", took)
		}
	}
	if n := stuck.calls.Load(); n != 1 {
		t.Errorf("%d gatherings under way, want 1", n)
	}
	close(stuck.release)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mfs, err := all.Gather()
		if len(mfs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gatherer's metrics never came back: %v, %v", mfs, err)
		}
	}
}
