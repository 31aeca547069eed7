// Package config parses Herald's configuration, the MetalLB 0.12 ConfigMap format, into a
// validated model.
//
// Parse is a pure function from the YAML text to a *Config: it reads strictly (an unknown
// key is an error naming its path), validates everything that can be checked without the
// cluster (addresses, overlaps, ASNs, timers, communities, aggregation lengths) and
// reports every problem at once, each as a *FieldError naming the field path, the line
// and the offending value. Marshal writes a Config back in the same format, so that
// Parse(Marshal(c)) gives c again.
//
// What Herald accepts but does not do as written (BFD echo mode) is not an error: Parse
// returns it in Config.Warnings, located like an error, for the controller's Event and
// `kubectl herald validate` to show. The test table in metallb_test.go holds MetalLB
// 0.12.1's own configuration cases, which Herald must decide alike.
//
// Herald adds keys to the format but never changes the meaning of one: `interfaces` on a
// pool and `large-communities` on a BGP advertisement are Herald's.
package config
