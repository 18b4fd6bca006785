package systemdtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Install says which units InstallUnits installs and how it adapts them to the test.
type Install struct {
	// Stage names the units' directory: <module root>/units/<Stage>/.
	Stage string
	// Dir, when set, is the units' directory instead of units/<Stage>.
	Dir string
	// Binary, when set, replaces the program of every ExecStart=; the unit's arguments
	// are kept. It must be an absolute path. After Edit, a service with PrivateTmp= or
	// DynamicUser= gets a BindReadOnlyPaths= of the binary's directory, since its
	// private /tmp would hide a binary built by BuildStage.
	Binary string
	// Args are appended to every ExecStart=.
	Args []string
	// Port, when set, turns the first ListenStream= of each unit into
	// 127.0.0.1:Port and drops the others.
	Port int
	// Edit, when set, rewrites each file after Binary, Args and Port; name is the
	// file's name.
	Edit func(name, content string) string
}

// InstallUnits copies the units of in into the manager's unit directory, adapted as
// in says, reloads the manager and returns the units' names, sorted.
func (m *Manager) InstallUnits(t testing.TB, in Install) []string {
	t.Helper()
	dir := in.Dir
	if dir == "" {
		require.NotEmpty(t, in.Stage, "Install needs a Stage or a Dir")
		dir = filepath.Join(ModuleRoot(t), "units", in.Stage)
	}
	if in.Binary != "" {
		require.True(t, filepath.IsAbs(in.Binary), "Install.Binary %q is not absolute", in.Binary)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err, "reading the units of %s", dir)
	var names []string
	for _, entry := range entries {
		if !entry.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		require.NoError(t, err)
		content := rewriteUnit(string(data), in)
		if in.Edit != nil {
			content = in.Edit(entry.Name(), content)
		}
		if in.Binary != "" {
			content = bindBinary(content, in.Binary)
		}
		err = os.WriteFile(filepath.Join(m.UnitDir(), entry.Name()), []byte(content), 0o644)
		require.NoError(t, err)
		names = append(names, entry.Name())
	}
	require.NotEmpty(t, names, "no unit files in %s", dir)
	sort.Strings(names)
	m.MustSystemctl(t, "daemon-reload")
	m.units = append(m.units, names...)
	return names
}

// rewriteUnit applies Binary, Args and Port of in to a unit file. It knows the unit
// syntax well enough for our units: one directive per line, `Key=value` with optional
// spaces around "=", comments starting with "#" or ";".
func rewriteUnit(content string, in Install) string {
	var out []string
	listening := false
	for _, line := range strings.Split(content, "\n") {
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch {
		case !ok || value == "" || strings.HasPrefix(key, "#") || strings.HasPrefix(key, ";"):
			// Comments, sections, and resets such as "ExecStart=" stay as they are.
		case key == "ExecStart" && (in.Binary != "" || len(in.Args) > 0):
			line = "ExecStart=" + rewriteExec(value, in.Binary, in.Args)
		case key == "ListenStream" && in.Port != 0:
			if listening {
				continue
			}
			listening = true
			line = fmt.Sprintf("ListenStream=127.0.0.1:%d", in.Port)
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// bindBinary adds a BindReadOnlyPaths= of binary's directory to a service with
// PrivateTmp= or DynamicUser= (which implies it): its private /tmp would hide a
// binary built by BuildStage.
func bindBinary(content, binary string) string {
	lines := strings.Split(content, "\n")
	privateTmp, service := false, -1
	for i, line := range lines {
		key, value, _ := strings.Cut(line, "=")
		switch strings.TrimSpace(key) {
		case "[Service]":
			service = i
		case "PrivateTmp", "DynamicUser":
			privateTmp = privateTmp || isTrue(strings.TrimSpace(value))
		}
	}
	if !privateTmp || service < 0 {
		return content
	}
	// No comment after the value: systemd would take it for more paths.
	bind := []string{"# systemdtest: the private /tmp would hide the test's binary.",
		"BindReadOnlyPaths=" + strings.ReplaceAll(filepath.Dir(binary), "%", "%%")}
	lines = append(lines[:service+1], append(bind, lines[service+1:]...)...)
	return strings.Join(lines, "\n")
}

// isTrue tells whether a unit file boolean is true.
func isTrue(value string) bool {
	switch strings.ToLower(value) {
	case "1", "yes", "y", "true", "t", "on":
		return true
	}
	return false
}

// rewriteExec replaces the program of an ExecStart= value with binary (unless it is
// empty) and appends args, keeping systemd's prefixes such as "-" or "+".
func rewriteExec(value, binary string, args []string) string {
	prefix := value[:len(value)-len(strings.TrimLeft(value, "@-:+!"))]
	rest := value[len(prefix):]
	program, params, _ := strings.Cut(rest, " ")
	if strings.HasPrefix(rest, `"`) {
		if end := strings.Index(rest[1:], `"`); end >= 0 {
			program, params = rest[:end+2], strings.TrimSpace(rest[end+2:])
		}
	}
	if binary != "" {
		program = quoteExecArg(binary)
	}
	words := []string{prefix + program}
	if params = strings.TrimSpace(params); params != "" {
		words = append(words, params)
	}
	for _, arg := range args {
		words = append(words, quoteExecArg(arg))
	}
	return strings.Join(words, " ")
}

// quoteExecArg quotes one word for ExecStart=: "%" and "$" are doubled so that
// systemd does not expand them, and a word with blanks, quotes or backslashes is put
// in double quotes.
func quoteExecArg(arg string) string {
	arg = strings.NewReplacer("%", "%%", "$", "$$").Replace(arg)
	if arg != "" && !strings.ContainsAny(arg, " \t\"'\\;") {
		return arg
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(arg) + `"`
}

// BuildStage builds the package in stageDir (relative to the module root, such as
// "02-socket-activated") into a temporary directory and returns the binary's path,
// named after the directory. A socket-activated stage must run as a binary: a
// wrapper such as `go run` would not have the pid in LISTEN_PID.
func BuildStage(t testing.TB, stageDir string) string {
	t.Helper()
	// Not t.TempDir(), which only its owner may enter: a service with DynamicUser=
	// runs as another user.
	dir, err := os.MkdirTemp("", "dice-bin-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	binary := filepath.Join(dir, filepath.Base(stageDir))
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", binary,
		"./"+filepath.ToSlash(filepath.Clean(stageDir)))
	cmd.Dir = ModuleRoot(t)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build ./%s:\n%s", stageDir, out)
	return binary
}

// ModuleRoot is the directory of the go.mod above the test's working directory.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "no go.mod above the working directory")
		dir = parent
	}
}

// FreePort is a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
