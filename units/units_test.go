//go:build e2e

// Package units holds no code: it is the unit files of every stage, and this test,
// which checks each of them with systemd's own parser. Next to them, hardening/<stage>/
// holds each stage's hardening drop-in, which `make install-system` installs with the
// units (and `make run-stage` does not): the test checks each unit with its drop-in.
package units

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/internal/systemdtest"
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

// dropIns are the hardening drop-ins of every stage, as hardening/<stage>/<unit>.d/*.conf.
func dropIns(t *testing.T) []string {
	files, err := filepath.Glob("hardening/0*/*.d/*.conf")
	require.NoError(t, err)
	return files
}

// TestDropIns: each stage has a hardening drop-in for each of its services, and
// every drop-in belongs to a unit of its stage.
func TestDropIns(t *testing.T) {
	have := map[string]bool{}
	for _, f := range dropIns(t) {
		have[f] = true
		// hardening/<stage>/<unit>.d/hardening.conf belongs to <stage>/<unit>.
		stage := filepath.Base(filepath.Dir(filepath.Dir(f)))
		unit := strings.TrimSuffix(filepath.Base(filepath.Dir(f)), ".d")
		assert.FileExists(t, filepath.Join(stage, unit), "%s has no unit", f)
	}
	for _, f := range unitFiles(t) {
		if strings.HasSuffix(f, ".service") {
			dropIn := filepath.Join("hardening", f+".d", "hardening.conf")
			assert.True(t, have[dropIn], "%s has no hardening drop-in %s", f, dropIn)
		}
	}
}

// installTree copies a stage's units and drop-ins into dir as `make install-system`
// lays them out in /etc/systemd/system and returns the units' paths. With execStart,
// a drop-in runs it instead of our programs (those in /usr/local/bin, as
// scripts/run-stage --programs names them; not systemd's proxy).
func installTree(t *testing.T, stage, dir, execStart string) []string {
	var units []string
	for _, f := range unitFiles(t) {
		if filepath.Dir(f) != stage {
			continue
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		name := filepath.Join(dir, filepath.Base(f))
		require.NoError(t, os.WriteFile(name, b, 0o644))
		units = append(units, name)
	}
	programs, err := systemdtest.Query(systemdtest.ModuleRoot(t), "--programs", stage)
	require.NoError(t, err)
	for _, line := range programs {
		if unit, _, ok := strings.Cut(line, " "); ok && execStart != "" {
			require.NoError(t, os.MkdirAll(filepath.Join(dir, unit+".d"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, unit+".d", "zz-test.conf"),
				[]byte("[Service]\nExecStart=\nExecStart="+execStart+"\n"), 0o644))
		}
	}
	hardening := filepath.Join("hardening", stage)
	err = filepath.WalkDir(hardening, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(hardening, path)
		require.NoError(t, err)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755))
		return os.WriteFile(filepath.Join(dir, rel), b, 0o644)
	})
	require.NoError(t, err)
	return units
}

// TestVerify runs `systemd-analyze verify` on every unit, with its hardening drop-in
// (systemd reads <unit>.d/ next to the unit file) and ExecStart= pointing at a binary
// that exists: systemd must have nothing to say about any of them.
func TestVerify(t *testing.T) {
	analyze := systemdtest.Need(t, "systemd-analyze")
	for _, stage := range stages(t) {
		t.Run(stage, func(t *testing.T) {
			dir := t.TempDir()
			names := installTree(t, stage, dir, "/bin/true")
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

// TestExposure scores each stage's service, hardened by its drop-in, with
// `systemd-analyze security --offline=yes --root=`, as installed in
// <root>/etc/systemd/system. A socket-activated service needs no network of its own
// and reaches 0.2; stage 01 opens its own port, so it keeps the host's network.
// Stage 05's proxy and app share a private network, and may create IP sockets in it
// (the proxy calls the app): 0.5 each. Stage 08's service is podman, which needs root's
// powers to build the container: its drop-in takes what podman can spare.
func TestExposure(t *testing.T) {
	analyze := systemdtest.Need(t, "systemd-analyze")
	exposure := regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`)
	for _, stage := range stages(t) {
		t.Run(stage, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "etc", "systemd", "system")
			require.NoError(t, os.MkdirAll(dir, 0o755))
			installTree(t, stage, dir, "")
			limit := 0.5
			switch stage {
			case "01-always-on":
				limit = 2.0
			case "08-container":
				limit = 7.8
			}
			for _, f := range unitFiles(t) {
				if filepath.Dir(f) != stage || !strings.HasSuffix(f, ".service") {
					continue
				}
				// A template is analyzed through an instance of it.
				unit := strings.Replace(filepath.Base(f), "@.", "@0.", 1)
				out, err := exec.Command(analyze, "security", "--offline=yes",
					"--root="+root, "--no-pager", unit).CombinedOutput()
				require.NoError(t, err, "%s", out)
				m := exposure.FindSubmatch(out)
				require.NotNil(t, m, "no exposure level in:\n%s", out)
				score, err := strconv.ParseFloat(string(m[1]), 64)
				require.NoError(t, err)
				assert.LessOrEqual(t, score, limit, "%s exposure:\n%s", unit, out)
			}
		})
	}
}

// TestNoInlineComments: systemd has no inline comments. "TimeoutStartSec=1min #
// exit when idle", the published post's recipe, makes it ignore the whole line.
func TestNoInlineComments(t *testing.T) {
	for _, f := range append(unitFiles(t), dropIns(t)...) {
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
	analyze := systemdtest.Need(t, "systemd-analyze")
	f := filepath.Join(t.TempDir(), "dice.service")
	require.NoError(t, os.WriteFile(f, []byte("[Service]\nExecStart=/bin/true\n"+
		"TimeoutStartSec=1min # exit when idle\n"), 0o644))
	out, _ := exec.Command(analyze, "verify", "--man=no", f).CombinedOutput()
	assert.Contains(t, string(out), "Failed to parse TimeoutStartSec= parameter, ignoring")
}
