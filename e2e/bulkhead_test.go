package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldlb/herald/hack/netlab"
)

// bgpPeerConfig is the lab's layer-2 pool with a BGP peer configured for every node:
// each speaker runs its BGP process, which the tests below make fail or hang.
const bgpPeerConfig = `
forwarding: none
peers:
- {peer-address: 192.168.10.1, peer-asn: 64500, my-asn: 64501}
address-pools:
- name: default
  protocol: layer2
  addresses: [192.168.10.90-192.168.10.100]
`

// bgpFault is a way for a node's BGP process to behave, and the speaker flags for it.
type bgpFault struct {
	name  string
	flags func(t testing.TB) []string
}

var bgpFaults = []bgpFault{
	{"no-bgp", func(testing.TB) []string { return []string{"--bgp=false"} }},
	{"bgp-failing", func(testing.TB) []string { return []string{"--bgp-binary=/bin/false"} }},
	{"bgp-hung", func(t testing.TB) []string { return []string{"--bgp-binary=" + hungBGP(t)} }},
}

// hungBGP writes a BGP process that never answers: it reads nothing and never exits.
func hungBGP(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "speaker-bgp-hung")
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexec sleep infinity\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// A BGP process that fails at once or never answers holds up nothing of layer 2: when the
// owner's speaker is killed, the address moves and the client reaches the new owner.
// Correctness only; how fast is BenchmarkFailoverBGPFaults.
func TestFailoverWhileBGPFails(t *testing.T) {
	for _, f := range bgpFaults[1:] {
		t.Run(f.name, func(t *testing.T) {
			c := start(t, Options{Config: bgpPeerConfig, SpeakerFlags: f.flags(t)})
			ip := c.CreateService("web", nil)[0]
			for range 2 {
				from, to, took := c.failover(t, ip, "crash")
				if from == to {
					t.Fatalf("%s still owns %s after its speaker was killed", from, ip)
				}
				t.Logf("%s: %s -> %s, traffic through the new owner after %s", f.name, from, to, took.Round(time.Millisecond))
			}
		})
	}
}

// BenchmarkFailoverBGPFaults measures, with a BGP peer configured and each node's BGP
// process absent (--bgp=false), failing at once (--bgp-binary=/bin/false) or never
// answering, the time from SIGKILL of the owner's speaker to the client's first TCP
// connection answered by the new owner, HERALD_FAILOVER_RUNS times each (default 5).
// HERALD_E2E_SPEAKER=PATH measures another speaker binary. Run:
//
//	go test ./e2e -run '^$' -bench FailoverBGPFaults -benchtime 1x
func BenchmarkFailoverBGPFaults(b *testing.B) {
	runs := 5
	if v, err := strconv.Atoi(envOr("HERALD_FAILOVER_RUNS", "5")); err == nil && v > 0 {
		runs = v
	}
	for _, f := range bgpFaults {
		b.Run(f.name, func(b *testing.B) {
			netlab.Require(b)
			c := Start(b, benchSpeaker(), Options{Config: bgpPeerConfig, SpeakerFlags: f.flags(b)})
			ip := c.CreateService("web", nil)[0]
			for b.Loop() {
				var took []time.Duration
				for range runs {
					_, _, d := c.failover(b, ip, "crash")
					took = append(took, d)
				}
				slices.Sort(took)
				b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-median")
				b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-max")
				b.Logf("%s: %v", f.name, took)
			}
		})
	}
}

// readyz asks n's speaker's /readyz and returns the status code and body.
func (c *Cluster) readyz(n *Node) (int, string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: n.NS.DialContext}}
	resp, err := client.Get("http://127.0.0.1:7473/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// A speaker started while the API server does not answer waits for it: it stays up,
// says it is not ready and why, and joins the others once the API server is back.
func TestSpeakerWaitsForAPIServerAtStart(t *testing.T) {
	c := start(t, Options{})
	n := c.Nodes[0]
	c.StopSpeaker(n, syscall.SIGKILL)
	resume := c.freezeAPIServer(t)
	c.StartSpeaker(n)
	pid := n.SpeakerPid()
	var code int
	var body string
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("the speaker exited while the API server was frozen (logs in %s)", c.LogDir())
		}
		code, body, err = c.readyz(n)
	}
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for") {
		t.Fatalf("/readyz with the API server frozen: %d %q (%v); want 503 saying what it waits for", code, body, err)
	}
	t.Logf("/readyz while the API server is frozen: %d %q", code, body)
	resume()
	start := time.Now()
	for deadline := start.Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if code, body, err = c.readyz(n); err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60 s after the API server came back, /readyz says %d %q (%v) (logs in %s)", code, body, err, c.LogDir())
		}
	}
	t.Logf("ready %s after the API server came back", time.Since(start).Round(time.Millisecond))
	c.WaitMembers(len(c.Nodes), 20*time.Second)
	ip := c.CreateService("web", nil)[0]
	c.owner(t, ip, 10*time.Second)
}
