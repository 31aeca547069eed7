//go:build !race

package gobgp

const raceDetector = false
