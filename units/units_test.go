// Package units holds no code: it is the unit files of every stage, and this test,
// which checks each of them with systemd's own parser.
package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func unitFiles(t *testing.T) []string {
	files, err := filepath.Glob("0*/*")
	require.NoError(t, err)
	var units []string
	for _, f := range files {
		if strings.HasSuffix(f, ".service") || strings.HasSuffix(f, ".socket") {
			units = append(units, f)
		}
	}
	require.GreaterOrEqual(t, len(units), 7, "every stage has its units")
	return units
}

// TestVerify runs `systemd-analyze verify` on every unit, with ExecStart= pointing
// at a binary that exists: systemd must have nothing to say about any of them.
func TestVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("DICE_REQUIRE_SYSTEMD") == "1" {
			t.Fatal("systemd-analyze is not installed")
		}
		t.Skip("systemd-analyze is not installed (it comes with systemd)")
	}
	execStart := regexp.MustCompile(`(?m)^ExecStart=\S+`)
	for _, stage := range stages(t) {
		t.Run(stage, func(t *testing.T) {
			dir := t.TempDir()
			var names []string
			for _, f := range unitFiles(t) {
				if filepath.Dir(f) != stage {
					continue
				}
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				b = execStart.ReplaceAll(b, []byte("ExecStart=/bin/true"))
				name := filepath.Join(dir, filepath.Base(f))
				require.NoError(t, os.WriteFile(name, b, 0o644))
				names = append(names, name)
			}
			// A template is verified through an instance of it, as systemd runs it.
			for i, n := range names {
				if strings.HasSuffix(n, "@.service") {
					inst := strings.TrimSuffix(n, "@.service") + "@0.service"
					require.NoError(t, os.Symlink(n, inst))
					names[i] = inst
				}
			}
			cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, names...)...)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			assert.NoError(t, err)
			assert.Empty(t, string(out))
		})
	}
}

func stages(t *testing.T) []string {
	seen := map[string]bool{}
	var dirs []string
	for _, f := range unitFiles(t) {
		if d := filepath.Dir(f); !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// TestNoInlineComments: systemd has no inline comments. "TimeoutStartSec=1min #
// exit when idle", the published post's recipe, makes it ignore the whole line.
func TestNoInlineComments(t *testing.T) {
	for _, f := range unitFiles(t) {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "=") && !strings.HasPrefix(line, "#") {
				assert.NotContains(t, line, "#", "%s:%d: inline comment", f, i+1)
			}
		}
	}
}

// TestRecipeIsIgnored shows, with systemd's own parser, why the post's one-line
// idle recipe does nothing.
func TestRecipeIsIgnored(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (it comes with systemd)")
	}
	f := filepath.Join(t.TempDir(), "dice.service")
	require.NoError(t, os.WriteFile(f, []byte("[Service]\nExecStart=/bin/true\n"+
		"TimeoutStartSec=1min # exit when idle\n"), 0o644))
	out, _ := exec.Command(analyze, "verify", "--man=no", f).CombinedOutput()
	assert.Contains(t, string(out), "Failed to parse TimeoutStartSec= parameter, ignoring")
}
