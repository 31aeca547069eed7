package netlab

import (
	"os"
	"syscall"
	"time"
)

// Terminate asks p to stop (SIGTERM) and waits until done is closed (its Wait returned,
// or its output ended); after grace it kills p and waits again.
func Terminate(p *os.Process, done <-chan struct{}, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = p.Kill()
		<-done
	}
}
