package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldlb/herald/hack/netlab"
)

// rss returns the resident set size of n's speaker, in MiB: all of it, and the parts
// that are anonymous memory (heap, stacks) and file-backed (the binary's own pages).
func (c *Cluster) rss(n *Node) (total, anon, file float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.SpeakerPid()))
	if err != nil {
		return -1, -1, -1
	}
	kb := func(v string) float64 {
		f, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		return f / 1024
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch k {
		case "VmRSS":
			total = kb(v)
		case "RssAnon":
			anon = kb(v)
		case "RssFile":
			file = kb(v)
		}
	}
	return total, anon, file
}

// heap returns the speaker's Go heap in use, in MiB, from its metrics.
func (c *Cluster) heap(n *Node) float64 {
	return c.metric(n, "go_memstats_heap_inuse_bytes") / (1 << 20)
}

// metric returns the value of an unlabelled metric of n's speaker, -1 when it has none.
func (c *Cluster) metric(n *Node, name string) float64 {
	m, err := c.Metrics(n)
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// BenchmarkSpeakerMemory measures the speakers' memory with 1,000 and then 5,000
// layer-2 Services on 3 nodes: the largest RSS and Go heap of the three, once every
// address is announced and the speakers have settled. Run (root):
//
//	go test ./e2e -run '^$' -bench SpeakerMemory -benchtime 1x
//
// HERALD_E2E_SPEAKER=PATH measures another speaker binary in the same lab (an older
// Herald, to compare).
func BenchmarkSpeakerMemory(b *testing.B) {
	bin := benchSpeaker()
	for b.Loop() {
		netlab.Require(b)
		c := Start(b, bin, Options{Config: "forwarding: none\naddress-pools:\n- name: big\n  protocol: layer2\n  addresses: [10.100.0.0/16]\n"})
		total := 0
		for _, n := range []int{1000, 5000} {
			c.createManyFrom(b, total, n-total)
			total = n
			c.waitAnnounced(b, n)
			time.Sleep(5 * time.Second) // let the caches and the garbage collector settle
			var rss, anon, file, heap float64
			for _, node := range c.Nodes {
				if t, a, f := c.rss(node); t > rss {
					rss, anon, file = t, a, f
				}
				heap = max(heap, c.heap(node))
			}
			b.ReportMetric(rss, fmt.Sprintf("MiB-rss-%d", n))
			b.ReportMetric(anon, fmt.Sprintf("MiB-rss-anon-%d", n))
			b.ReportMetric(file, fmt.Sprintf("MiB-rss-file-%d", n))
			b.ReportMetric(heap, fmt.Sprintf("MiB-heap-%d", n))
		}
	}
}
