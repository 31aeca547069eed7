package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decoder fills a raw struct from a YAML node tree strictly: every key must be known,
// every scalar must fit its field. It records the line of every path it visits so that
// validation errors can point at the line too.
type decoder struct {
	errs  Errors
	lines map[string]int
	steps int // nodes visited, bounded so that aliases cannot expand without end
}

// maxSteps bounds the nodes a document may expand to, aliases included. Real
// configurations are a few hundred nodes; a million-address pool list is still far below.
const maxSteps = 1 << 20

func (d *decoder) fail(path string, n *yaml.Node, value, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Path: path, Line: n.Line, Value: value, Msg: fmt.Sprintf(format, args...)})
}

// line returns the line recorded for path, or for its nearest recorded parent.
func (d *decoder) line(path string) int {
	for {
		if l, ok := d.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a single value"
	}
	return "something else"
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if d.steps++; d.steps > maxSteps {
		if d.steps == maxSteps+1 {
			d.fail(path, n, "", "document expands to more than %d values (aliases included)", maxSteps)
		}
		return
	}
	d.lines[path] = n.Line
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the field unset
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(path, n, "", "must be a list, found %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(path, n, "", "must be a mapping, found %s", kindName(n))
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			kp := path + "." + k.Value
			if k.Kind != yaml.ScalarNode {
				d.fail(path, k, "", "keys must be single values, found %s", kindName(k))
				continue
			}
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				d.fail(kp, k, "", "key is given twice")
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e, kp)
			m.SetMapIndex(reflect.ValueOf(k.Value), e)
		}
		v.Set(m)
	default:
		d.decodeScalar(n, v, path)
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(path, n, "", "must be a mapping, found %s", kindName(n))
		return
	}
	t := v.Type()
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(path, k, "", "keys must be single values, found %s", kindName(k))
			continue
		}
		kp := k.Value
		if path != "" {
			kp = path + "." + k.Value
		}
		if seen[k.Value] {
			d.fail(kp, k, "", "key is given twice")
			continue
		}
		seen[k.Value] = true
		f, ok := fieldByKey(t, k.Value)
		if !ok {
			d.fail(kp, k, "", "unknown key")
			continue
		}
		d.decode(val, v.Field(f), kp)
	}
}

func fieldByKey(t reflect.Type, key string) (int, bool) {
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == key {
			return i, true
		}
	}
	return 0, false
}

func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.fail(path, n, "", "must be a single value, found %s", kindName(n))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(n.Value)
	case reflect.Bool:
		b, ok := parseBool(n.Value)
		if !ok {
			d.fail(path, n, n.Value, "must be true or false")
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, err := strconv.ParseInt(n.Value, 10, v.Type().Bits())
		if err != nil {
			d.fail(path, n, n.Value, "must be a whole number")
			return
		}
		v.SetInt(i)
	case reflect.Uint16, reflect.Uint32, reflect.Uint64:
		u, err := strconv.ParseUint(n.Value, 10, v.Type().Bits())
		if err != nil {
			d.fail(path, n, n.Value, "must be a whole number from 0 to %d", uint64(1)<<v.Type().Bits()-1)
			return
		}
		v.SetUint(u)
	default:
		panic(fmt.Sprintf("config: no decoder for %s", v.Type())) // a programming error in raw.go
	}
}

// parseBool accepts YAML 1.2's booleans, which is what yaml.v3 resolves.
func parseBool(s string) (bool, bool) {
	switch s {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	return false, false
}

// decodeDocument reads text into a rawConfig.
func decodeDocument(text []byte) (*rawConfig, *decoder) {
	d := &decoder{lines: map[string]int{}}
	raw := &rawConfig{}
	var doc yaml.Node
	if err := yaml.Unmarshal(text, &doc); err != nil {
		d.errs = append(d.errs, &FieldError{Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")})
		return raw, d
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return raw, d // an empty document is an empty configuration
	}
	d.decode(doc.Content[0], reflect.ValueOf(raw).Elem(), "")
	return raw, d
}
