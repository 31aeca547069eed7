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

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Path != "" {
		b.WriteString(e.Path)
	} else {
		b.WriteString("config")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Value != "" {
		fmt.Fprintf(&b, ": %q", e.Value)
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
