//go:build race

package gobgp

// raceDetector is true in a test binary built with -race.
const raceDetector = true
