package config

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Held is an address a Service holds: what its status publishes.
type Held struct {
	Service string // namespace/name
	IP      netip.Addr
}

// Refused is a valid configuration that may not be put in force: it would take away
// addresses that Services hold.
type Refused struct {
	Lost []Held // sorted by address, then Service
}

func (e *Refused) Error() string {
	var parts []string
	for i := 0; i < len(e.Lost); {
		j := i
		var svcs []string
		for ; j < len(e.Lost) && e.Lost[j].IP == e.Lost[i].IP; j++ {
			svcs = append(svcs, e.Lost[j].Service)
		}
		parts = append(parts, fmt.Sprintf("%s (held by %s)", e.Lost[i].IP, strings.Join(svcs, ", ")))
		i = j
	}
	return "the new pools leave out addresses in use: " + strings.Join(parts, "; ")
}

// Admit is the one rule that decides whether text may be the configuration in force
// while Services hold held: it must parse (an error is Errors), and every held address
// must lie in one of its pools (an error is *Refused). The controller applies it to each
// new version of the ConfigMap, the admission webhook to each edit, and `kubectl herald
// validate` to a file; the speakers run what the controller put in force.
func Admit(text []byte, held []Held) (*Config, error) {
	cfg, err := Parse(text)
	if err != nil {
		return nil, err
	}
	var lost []Held
	for _, h := range held {
		if _, ok := cfg.PoolOf(h.IP); !ok {
			lost = append(lost, h)
		}
	}
	if len(lost) > 0 {
		slices.SortFunc(lost, func(a, b Held) int { return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Service, b.Service)) })
		lost = slices.Compact(lost)
		return nil, &Refused{Lost: lost}
	}
	return cfg, nil
}

// Hash names a configuration text in logs, metrics and annotations: the first 12 hex
// digits of its SHA-256, so that two components can tell whether they run the same one.
func Hash(text []byte) string {
	sum := sha256.Sum256(text)
	return hex.EncodeToString(sum[:6])
}
