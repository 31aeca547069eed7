// Package leaktest checks that a component's Run has ended every goroutine it started by
// the time it returns. Goroutines running Herald's own code must be gone at once (one
// still waiting after Run returned is exactly the defect; one caught runnable, between
// the wg.Done that let Run return and its own return, gets Exiting to finish); those of
// a library whose end
// Run cannot await (client-go's watch decoders and Event workers end a moment after
// their stream closes or their context is cancelled) get a short, bounded grace.
package leaktest

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// own is the prefix of Herald's packages, whose goroutines get no grace.
const own = "github.com/heraldlb/herald/"

// Grace bounds how long a library goroutine may take to end after Run returned.
const Grace = 2 * time.Second

// Exiting bounds how long one of Herald's goroutines, found runnable, may take to end.
const Exiting = 100 * time.Millisecond

// Check fails t if a goroutine other than the caller's runs code whose package path
// starts with one of pkgs (for example "github.com/heraldlb/herald/pkg/speaker."): right
// now for Herald's packages, after Grace for the others.
func Check(t testing.TB, pkgs ...string) {
	t.Helper()
	var strict, lenient []string
	for _, p := range pkgs {
		if strings.HasPrefix(p, own) {
			strict = append(strict, p)
		} else {
			lenient = append(lenient, p)
		}
	}
	exiting := map[string]bool{} // by goroutine ID
	for _, s := range running(strict) {
		if runnable(s) {
			exiting[id(s)] = true
		} else {
			t.Errorf("a goroutine outlives its component's Run:\n%s", s)
		}
	}
	for _, s := range settle(strict, Exiting, func(s string) bool { return exiting[id(s)] }) {
		t.Errorf("a goroutine outlives its component's Run by more than %v:\n%s", Exiting, s)
	}
	for _, s := range settle(lenient, Grace, func(string) bool { return true }) {
		t.Errorf("a goroutine outlives its component's Run by more than %v:\n%s", Grace, s)
	}
}

// settle waits up to limit for the goroutines of pkgs that match to end, and returns
// those that did not.
func settle(pkgs []string, limit time.Duration, match func(string) bool) []string {
	left := filter(running(pkgs), match)
	for deadline := time.Now().Add(limit); len(left) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		left = filter(running(pkgs), match)
	}
	return left
}

func filter(stacks []string, match func(string) bool) []string {
	var out []string
	for _, s := range stacks {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}

// id is the goroutine ID of a stack ("goroutine 12 [running]:").
func id(stack string) string {
	f := strings.Fields(stack)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// runnable says whether a goroutine's stack shows it running or ready to run, not
// waiting.
func runnable(stack string) bool {
	header, _, _ := strings.Cut(stack, "\n")
	return strings.Contains(header, "[runnable") || strings.Contains(header, "[running")
}

// running returns the stacks of the goroutines, other than the caller's and the test
// binary's own, that run code of one of pkgs.
func running(pkgs []string) []string {
	if len(pkgs) == 0 {
		return nil
	}
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, s := range strings.Split(string(buf), "\n\n")[1:] { // the first is the caller's
		if strings.Contains(s, "testing.tRunner(") || strings.Contains(s, "testing.(*M).Run(") {
			continue // the test binary's own: its main goroutine, and running tests
		}
		for _, p := range pkgs {
			if strings.Contains(s, p) {
				found = append(found, s)
				break
			}
		}
	}
	return found
}
