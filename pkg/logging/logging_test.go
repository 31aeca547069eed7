package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	var b bytes.Buffer
	l, err := New(&b, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "ip", "192.168.10.90")
	if strings.Contains(b.String(), "hidden") || !strings.Contains(b.String(), `"ip":"192.168.10.90"`) {
		t.Errorf("output %q", b.String())
	}
	if _, err := New(&b, "loud", "json"); err == nil || !strings.Contains(err.Error(), `--log-level "loud"`) {
		t.Errorf("bad level: %v", err)
	}
	if _, err := New(&b, "info", "xml"); err == nil || !strings.Contains(err.Error(), `--log-format "xml"`) {
		t.Errorf("bad format: %v", err)
	}
}
