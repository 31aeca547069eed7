package main

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The lab's Helm values carry the configuration of its ConfigMap unchanged.
func TestHelmValues(t *testing.T) {
	sample, err := os.ReadFile("../../config/samples/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := labConfigMap(sample)
	values, err := helmValues(text)
	if err != nil {
		t.Fatal(err)
	}
	var cm struct{ Data map[string]string }
	if err := yaml.Unmarshal([]byte(text), &cm); err != nil {
		t.Fatal(err)
	}
	var v struct{ Config string }
	if err := yaml.Unmarshal(values, &v); err != nil {
		t.Fatal(err)
	}
	if v.Config != cm.Data["config"] || !strings.HasPrefix(v.Config, "forwarding: none\nrelay-local: true\n") {
		t.Errorf("values %q, want config %q", values, cm.Data["config"])
	}
	if _, err := helmValues("kind: ConfigMap\ndata: {}\n"); err == nil {
		t.Error("a ConfigMap without key config gave values")
	}
}
