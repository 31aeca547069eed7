package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// link matches a Markdown inline link or image: [text](target) and ![alt](target).
var link = regexp.MustCompile(`\]\(([^()\s]+)(?:\s+"[^"]*")?\)`)

// heading matches a Markdown ATX heading.
var heading = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*#*\s*$`)

// TestRelativeLinks checks that every relative link in the README and in docs/ names a
// file that exists, and, with a #fragment, a heading in it.
func TestRelativeLinks(t *testing.T) {
	files, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "README.md"))
	if len(files) < 2 {
		t.Fatalf("found %v: expected the README and the pages of docs/", files)
	}
	checked := 0
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(stripCode(string(text)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, frag, _ := strings.Cut(target, "#")
			dest := f
			if path != "" {
				dest = filepath.Join(filepath.Dir(f), filepath.FromSlash(path))
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s: link %q: %v", f, target, err)
					continue
				}
			}
			if frag != "" && !hasAnchor(t, dest, frag) {
				t.Errorf("%s: link %q: no heading with anchor %q in %s", f, target, frag, dest)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative link found: the front page should link to docs/")
	}
}

// stripCode removes fenced code blocks, whose brackets are not links.
func stripCode(s string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.SplitAfter(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			in = !in
			continue
		}
		if !in {
			b.WriteString(line)
		}
	}
	return b.String()
}

// hasAnchor reports whether the Markdown file has a heading whose GitHub-style anchor is frag.
func hasAnchor(t *testing.T, file, frag string) bool {
	t.Helper()
	text, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, m := range heading.FindAllStringSubmatch(stripCode(string(text)), -1) {
		if anchor(m[1]) == frag {
			return true
		}
	}
	return false
}

// anchor is the fragment GitHub gives a heading: lower case, spaces to hyphens, and
// punctuation other than hyphens and underscores dropped.
func anchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestAnchor(t *testing.T) {
	for h, want := range map[string]string{
		"Layer 2: how failover works, and what it costs": "layer-2-how-failover-works-and-what-it-costs",
		"`kubectl herald`":  "kubectl-herald",
		"Forwarding (IPVS)": "forwarding-ipvs",
	} {
		if got := anchor(h); got != want {
			t.Errorf("anchor(%q) = %q, want %q", h, got, want)
		}
	}
}
