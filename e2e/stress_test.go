package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Never a failover that no failure caused: with every core saturated (stress-ng, twice
// as many workers as cores) for HERALD_STRESS_SECONDS (default 60; the claim is for 600),
// no speaker finds another dead and no address moves.
func TestNoFailoverUnderCPUSaturation(t *testing.T) {
	if _, err := exec.LookPath("stress-ng"); err != nil {
		t.Skip("needs stress-ng (make deps)")
	}
	seconds := envOr("HERALD_STRESS_SECONDS", "60")
	c := start(t, Options{Config: manyConfig})
	c.createMany(t, 100)
	c.waitAnnounced(t, 100)
	time.Sleep(2 * time.Second) // the takeovers of the start are over
	before := map[string]float64{}
	for _, n := range c.Nodes {
		before[n.Name] = c.metric(n, "herald_speaker_ownership_changes_total")
	}
	stress := exec.Command("stress-ng", "--cpu", "4", "--timeout", seconds+"s", "--quiet")
	if out, err := stress.CombinedOutput(); err != nil {
		t.Fatalf("stress-ng: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		if after := c.metric(n, "herald_speaker_ownership_changes_total"); after != before[n.Name] {
			t.Errorf("%s: %v ownership changes under load, want none", n.Name, after-before[n.Name])
		}
		log, _ := os.ReadFile(filepath.Join(c.LogDir(), n.Name+"-speaker.log"))
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "found dead") || strings.Contains(l, "left or failed") {
				t.Errorf("%s under load: %s", n.Name, l)
			}
		}
	}
	c.waitAnnounced(t, 100)
}
