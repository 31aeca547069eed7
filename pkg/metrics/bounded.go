package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Bounded serves the metrics of a Gatherer that may block (another process's, asked
// over a pipe): a scrape waits for it at most Timeout and then goes on without its
// metrics, and while one gathering is under way no other starts. So a hung BGP process
// neither holds /metrics nor piles up goroutines; the rest of the scrape is served.
type Bounded struct {
	Gatherer prometheus.Gatherer
	Timeout  time.Duration // default 1s

	mu      sync.Mutex
	pending chan struct{} // closed when the gathering under way ends; nil when none
	mfs     []*dto.MetricFamily
	err     error
}

var _ prometheus.Gatherer = (*Bounded)(nil)

// Gather returns the Gatherer's metrics, or none when it did not answer within Timeout.
func (b *Bounded) Gather() ([]*dto.MetricFamily, error) {
	b.mu.Lock()
	if b.pending == nil {
		done := make(chan struct{})
		b.pending = done
		go func() {
			mfs, err := b.Gatherer.Gather()
			b.mu.Lock()
			b.mfs, b.err, b.pending = mfs, err, nil
			b.mu.Unlock()
			close(done)
		}()
	}
	done := b.pending
	b.mu.Unlock()
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		return nil, nil // nothing rather than stale figures
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mfs, b.err
}
