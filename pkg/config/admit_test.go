package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestAdmit(t *testing.T) {
	held := []Held{
		{"ns/web", netip.MustParseAddr("10.250.0.100")},
		{"ns/dns", netip.MustParseAddr("10.250.0.100")},
		{"ns/api", netip.MustParseAddr("10.250.1.5")},
	}
	both := "address-pools:\n- {name: a, protocol: layer2, addresses: [10.250.0.100-10.250.0.110]}\n- {name: b, protocol: layer2, addresses: [10.250.1.0/24]}\n"
	tests := []struct {
		name    string
		text    string
		refused []Held // nil: admitted
		invalid bool
	}{
		{"every held address stays in a pool", both, nil, false},
		{"a pool renamed and grown keeps its addresses", "address-pools:\n- {name: z, protocol: layer2, addresses: [10.250.0.0/16]}\n", nil, false},
		{"an unused pool removed", "address-pools:\n- {name: a, protocol: layer2, addresses: [10.250.0.100/32]}\n- {name: b, protocol: layer2, addresses: [10.250.1.5/32]}\n", nil, false},
		{"a held address left out", "address-pools:\n- {name: a, protocol: layer2, addresses: [10.250.0.120-10.250.0.130]}\n- {name: b, protocol: layer2, addresses: [10.250.1.0/24]}\n",
			[]Held{{"ns/dns", netip.MustParseAddr("10.250.0.100")}, {"ns/web", netip.MustParseAddr("10.250.0.100")}}, false},
		{"invalid", "address-pools:\n- {name: a, protocol: layer3, addresses: [10.250.0.0/16]}\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Admit([]byte(tt.text), held)
			var r *Refused
			var invalid Errors
			switch {
			case tt.invalid:
				if !errors.As(err, &invalid) || cfg != nil {
					t.Fatalf("Admit = %v, %v; want field errors", cfg, err)
				}
			case tt.refused != nil:
				if !errors.As(err, &r) || cfg != nil {
					t.Fatalf("Admit = %v, %v; want a refusal", cfg, err)
				}
				if len(r.Lost) != len(tt.refused) || r.Lost[0] != tt.refused[0] || r.Lost[1] != tt.refused[1] {
					t.Errorf("lost %v, want %v", r.Lost, tt.refused)
				}
				if want := "10.250.0.100 (held by ns/dns, ns/web)"; !strings.Contains(err.Error(), want) {
					t.Errorf("message %q does not say %q", err, want)
				}
			default:
				if err != nil || cfg == nil {
					t.Fatalf("Admit = %v, %v; want admitted", cfg, err)
				}
			}
		})
	}
	if Hash([]byte(both)) == Hash([]byte(both+"\n")) || len(Hash(nil)) != 12 {
		t.Error("Hash does not tell texts apart, or is not 12 digits")
	}
}
