package config

import (
	"fmt"
	"strings"
)

// FieldError is one problem in a configuration, located by its field path
// (for example "address-pools[0].addresses[1]").
type FieldError struct {
	Path  string // field path in the document; "" for the document itself
	Line  int    // 1-based line in the YAML text, 0 when unknown
	Value string // the offending value as written, "" when there is none
	Msg   string // what is wrong
}

func (e *FieldError) Error() string { return located(e.Path, e.Line, e.Value, e.Msg) }

// Warning is something in a configuration that Herald accepts but does not do as the
// configuration asks (for example BFD echo mode, which Herald does not run), located like
// a FieldError. Warnings never make Parse fail: a MetalLB 0.12 configuration works
// unchanged, and the controller, the admission webhook and `kubectl herald validate` say
// what Herald does instead.
type Warning struct {
	Path  string // field path in the document
	Line  int    // 1-based line in the YAML text, 0 when unknown
	Value string // the value as written
	Msg   string // what Herald does instead
}

func (w Warning) String() string { return located(w.Path, w.Line, w.Value, w.Msg) }

// located writes "path (line N): msg: \"value\"", the form of every error and warning.
func located(path string, line int, value, msg string) string {
	var b strings.Builder
	if path != "" {
		b.WriteString(path)
	} else {
		b.WriteString("config")
	}
	if line > 0 {
		fmt.Fprintf(&b, " (line %d)", line)
	}
	b.WriteString(": ")
	b.WriteString(msg)
	if value != "" {
		fmt.Fprintf(&b, ": %q", value)
	}
	return b.String()
}

// Errors is every problem Parse found, in document order. Parse returns it as its error.
type Errors []*FieldError

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap lets errors.As find the individual field errors.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}
