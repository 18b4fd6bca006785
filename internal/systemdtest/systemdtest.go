// Package systemdtest gives a test, or the benchmark, a real systemd user manager of
// its own, and puts a stage's units in it.
//
// It is a thin layer over the scripts a reader runs: scripts/user-manager starts a
// private `systemd --user` (in its own mount namespace and cgroup, see there) in a
// state directory of the test's, and scripts/run-stage --install puts the stage's
// unit files in place as committed, plus a drop-in for the test's binary, arguments
// and port. Tests never use the reader's own session manager, so they cannot leave
// units or processes there.
//
// There is no journald in the private manager: services write to the manager's log
// file (Manager.Log), printed when a test fails. Tests read outcomes from systemd's
// properties (Result=, ActiveState=), never from that log's text.
//
// Where no real systemd can be had, New skips the test with the reason, or fails it
// when DICE_REQUIRE_SYSTEMD=1. With `go test -short`, New and Need skip. The tests that
// call New, and this package's own, are in files built only with the tag e2e (`go test
// -tags e2e`, make test): `go test ./...` links no test binary that would only skip.
package systemdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// commandTimeout bounds every command, so that a wedged manager fails the test
// instead of hanging it.
const commandTimeout = 60 * time.Second

// Manager is a private systemd user manager, run by scripts/user-manager.
type Manager struct {
	top, state string
}

// Start starts a private manager whose state lives in the new directory state, below
// the module root top.
func Start(top, state string) (*Manager, error) {
	m := &Manager{top: top, state: state}
	if out, err := m.script("user-manager", nil, "up"); err != nil {
		return nil, fmt.Errorf("scripts/user-manager up: %v\n%s", err, out)
	}
	return m, nil
}

// Stop stops the manager, its units and processes, and removes its state.
func (m *Manager) Stop() error {
	if out, err := m.script("user-manager", nil, "down"); err != nil {
		return fmt.Errorf("scripts/user-manager down: %v\n%s", err, out)
	}
	return nil
}

// New starts a private manager for t, and stops it when t ends, checking that none of
// its processes is left. When t has failed, the unit status and the log are printed.
func New(t testing.TB) *Manager {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no tests under a real systemd")
	}
	if _, err := exec.LookPath("systemctl"); err != nil {
		SkipOrFail(t, "no real systemd user manager: systemctl not found: install systemd")
	}
	// A short path: the manager's socket $XDG_RUNTIME_DIR/systemd/private must fit
	// the 108 bytes of a unix socket address.
	state, err := os.MkdirTemp("", "dice-sd-")
	require.NoError(t, err)
	m, err := Start(ModuleRoot(t), filepath.Join(state, "m"))
	if err != nil {
		_ = os.RemoveAll(state)
		SkipOrFail(t, fmt.Sprintf("no real systemd user manager: %v", err))
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := m.Systemctl("status", "--no-pager", "--full", "--all", "dice*")
			t.Logf("systemctl --user status 'dice*':\n%s", out)
			t.Logf("log of the private manager (services and systemd):\n%s", m.Log())
		}
		assert.NoError(t, m.Stop())
		assert.Empty(t, processesWithEnv("XDG_RUNTIME_DIR="+m.RuntimeDir()),
			"processes of the private manager outlived it")
		assert.NoError(t, os.RemoveAll(state))
	})
	return m
}

// script runs scripts/name args... with this manager's state directory and env.
func (m *Manager) script(name string, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(m.top, "scripts", name), args...)
	cmd.Env = append(m.Env(), append(env, "DICE_PRIVATE_SYSTEMD=1", "DICE_STATE_DIR="+m.state)...)
	return cmd.CombinedOutput()
}

// Env is os.Environ() with the XDG_RUNTIME_DIR of this manager, for commands such as
// `systemctl --user`. DBUS_SESSION_BUS_ADDRESS is dropped: systemctl falls back to
// that bus when the manager does not answer, and it may be the reader's own session.
func (m *Manager) Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "DICE_ADDR", "DICE_ARGS", "DICE_BIN",
			"DICE_BACKEND":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "XDG_RUNTIME_DIR="+m.RuntimeDir())
}

// RuntimeDir is the manager's XDG_RUNTIME_DIR.
func (m *Manager) RuntimeDir() string { return filepath.Join(m.state, "runtime") }

// Pid is the manager's process id.
func (m *Manager) Pid() int {
	data, _ := os.ReadFile(filepath.Join(m.state, "manager.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// Log is everything the services and the manager have written so far.
func (m *Manager) Log() string {
	data, err := os.ReadFile(filepath.Join(m.state, "manager.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}

// InstallStage puts the units of units/<stage>/ in place with scripts/run-stage
// --install: the service runs the stage's binary in binDir with args appended, and
// the socket listens on addr, if not empty.
func (m *Manager) InstallStage(stage, binDir, addr string, args ...string) error {
	return m.InstallBackend(stage, "", binDir, addr, args...)
}

// InstallBackend is InstallStage with stage 05's backend: "flask" for the blog post's
// dice.py, "" for stage 01's program (scripts/run-stage's DICE_BACKEND).
func (m *Manager) InstallBackend(stage, backend, binDir, addr string, args ...string) error {
	env := []string{"DICE_BIN=" + binDir, "DICE_ADDR=" + addr,
		"DICE_ARGS=" + strings.Join(args, " "), "DICE_BACKEND=" + backend}
	if out, err := m.script("run-stage", env, "--install", stage); err != nil {
		return fmt.Errorf("scripts/run-stage --install %s: %v\n%s", stage, err, out)
	}
	return nil
}

// Query is the lines of scripts/run-stage's answer to a query about stage, such as
// --units or --programs: the one place that reads a stage's units (see there).
func Query(top, query, stage string) ([]string, error) {
	out, err := exec.Command(filepath.Join(top, "scripts", "run-stage"), query, stage).Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/run-stage %s %s: %w", query, stage, err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"), nil
}

// Build builds programs (all of them if none) into dir with the one recipe there is,
// `make build`, from the package pkg if not empty, and returns what it printed.
func Build(top, dir, pkg string, programs ...string) (string, error) {
	args := []string{"-s", "-C", top, "build", "BIN=" + dir, "PKG=" + pkg}
	if len(programs) > 0 {
		args = append(args, "PROGRAMS="+strings.Join(programs, " "))
	}
	out, err := exec.Command("make", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("make build: %w\n%s", err, out)
	}
	return string(out), nil
}

// DropIn adds the drop-in name.conf to unit (such as "dice.socket") and reloads.
func (m *Manager) DropIn(unit, name, content string) error {
	dir := filepath.Join(m.RuntimeDir(), "systemd", "user", unit+".d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".conf"), []byte(content), 0o644); err != nil {
		return err
	}
	_, err := m.Systemctl("daemon-reload")
	return err
}

// Systemctl runs `systemctl --user args...` against the manager and returns its
// combined output.
func (m *Manager) Systemctl(args ...string) (string, error) {
	out, err := m.systemctl(true, args...)
	return string(out), err
}

// MustSystemctl is Systemctl that fails the test, with the output, on an error.
func (m *Manager) MustSystemctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := m.Systemctl(args...)
	require.NoError(t, err, "systemctl --user %s:\n%s", strings.Join(args, " "), out)
	return out
}

// Prop is `systemctl --user show -p prop --value unit`, without the final newline.
func (m *Manager) Prop(unit, prop string) (string, error) {
	out, err := m.systemctl(false, "show", "-p", prop, "--value", unit)
	return strings.TrimSuffix(string(out), "\n"), err
}

// Show is Prop that fails the test on an error.
func (m *Manager) Show(t testing.TB, unit, prop string) string {
	t.Helper()
	value, err := m.Prop(unit, prop)
	require.NoError(t, err, "systemctl --user show -p %s %s", prop, unit)
	return value
}

// MainPID is the main process of unit, 0 when it has none.
func (m *Manager) MainPID(t testing.TB, unit string) int {
	t.Helper()
	pid, err := strconv.Atoi(m.Show(t, unit, "MainPID"))
	require.NoError(t, err, "MainPID of %s", unit)
	return pid
}

// WaitProp polls prop of unit until it is want, and fails the test with the value it
// last saw after timeout.
func (m *Manager) WaitProp(t testing.TB, unit, prop, want string, timeout time.Duration) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := m.Prop(unit, prop)
		require.NoError(c, err)
		assert.Equal(c, want, got, "%s of %s", prop, unit)
	}, timeout, 50*time.Millisecond)
}

// Timestamp is a timestamp property of unit, such as ExecMainExitTimestamp, to the
// microsecond.
func (m *Manager) Timestamp(t testing.TB, unit, prop string) time.Time {
	t.Helper()
	out := m.MustSystemctl(t, "show", "--timestamp=us+utc", "-p", prop, "--value", unit)
	ts, err := time.Parse("Mon 2006-01-02 15:04:05.999999 MST", strings.TrimSpace(out))
	require.NoError(t, err, "%s of %s", prop, unit)
	return ts
}

// systemctl runs `systemctl --user args...`; combined selects stdout and stderr
// together, else stdout only (with stderr in the error).
func (m *Manager) systemctl(combined bool, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "systemctl", append([]string{"--user"}, args...)...)
	cmd.Env = m.Env()
	if combined {
		return cmd.CombinedOutput()
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, err
}

// Need returns the path of a systemd tool the test cannot do without, such as
// systemd-analyze or systemd-socket-activate. When it is missing the test is
// skipped, or fails where DICE_REQUIRE_SYSTEMD=1 (CI).
func Need(t testing.TB, program string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no tests with systemd's tools")
	}
	path, err := exec.LookPath(program)
	if err != nil {
		SkipOrFail(t, program+" is not installed (it comes with systemd)")
	}
	return path
}

// BuildStage builds the package in stageDir (relative to the module root, such as
// "02-socket-activated") into a temporary directory and returns that directory; the
// binary in it is named after stageDir. A socket-activated stage must run as a
// binary: a wrapper such as `go run` would not have the pid in LISTEN_PID. Under
// `make test`, which has built every stage once into $DICE_TEST_BIN, the binary is a
// hard link to that build: a path of the test's own all the same (tests find their
// processes by it, and replace it), without a build each.
func BuildStage(t testing.TB, stageDir string) string {
	t.Helper()
	dir := t.TempDir()
	if built := os.Getenv("DICE_TEST_BIN"); built != "" &&
		os.Link(filepath.Join(built, stageDir), filepath.Join(dir, stageDir)) == nil {
		return dir
	}
	_, err := Build(ModuleRoot(t), dir, "", stageDir)
	require.NoError(t, err)
	return dir
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

// FreePort is Port that fails the test when it finds none.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := Port()
	require.NoError(t, err)
	return port
}

// Port is a TCP port on 127.0.0.1 that was free a moment ago, for a socket unit or an
// app to listen on. It is taken at random below the kernel's ephemeral ports
// (net.ipv4.ip_local_port_range), where every client connection gets its own port:
// one of those, free when asked, could be a connection's a moment later, and the
// socket unit that listens there would fail (Result=resources, address in use).
func Port() (int, error) {
	low := 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		_, _ = fmt.Sscan(string(data), &low)
	}
	for range 100 {
		port := 10000 + rand.IntN(max(low-10000, 1))
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return port, ln.Close()
		}
	}
	return 0, fmt.Errorf("no free port from 10000 to %d on 127.0.0.1", low)
}

// PodmanEnv writes a podman configuration below dir, with storage and temporary files
// of its own (never the user's images and containers), and returns the environment
// that points podman at it. Where podman as root cannot run as readers' machines let
// it (a machine like CI's: itself a container, hybrid cgroups, no CAP_SYS_RESOURCE),
// it adds the two settings that make it run; neither changes what is tested.
func PodmanEnv(dir string) ([]string, error) {
	storage := fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n",
		dir+"/graph", dir+"/run")
	conf := fmt.Sprintf("[engine]\ntmp_dir = %q\n", dir+"/tmp")
	// crun refuses hybrid cgroups ("cgroups in hybrid mode not supported").
	fs, _ := exec.Command("stat", "-fc", "%T", "/sys/fs/cgroup").Output()
	if string(fs) != "cgroup2fs\n" {
		conf += "runtime = \"runc\"\n"
	}
	// As root, podman raises the open files and processes limits to 1048576 and
	// 32768, which needs CAP_SYS_RESOURCE; without it, stay below ours.
	status, err := os.ReadFile("/proc/self/status")
	if m := regexp.MustCompile(`CapEff:\s*([0-9a-f]+)`).FindSubmatch(status); err == nil && m != nil {
		if caps, err := strconv.ParseUint(string(m[1]), 16, 64); err == nil && caps&(1<<24) == 0 {
			conf = "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n" + conf
		}
	}
	env := []string{"CONTAINERS_STORAGE_CONF=" + dir + "/storage.conf",
		"CONTAINERS_CONF=" + dir + "/containers.conf"}
	return env, errors.Join(os.MkdirAll(dir, 0o755),
		os.WriteFile(dir+"/storage.conf", []byte(storage), 0o644),
		os.WriteFile(dir+"/containers.conf", []byte(conf), 0o644))
}

// ProcessState is the state letter of process pid in /proc/<pid>/stat: R running, S
// sleeping, T stopped (SIGSTOP), Z a zombie (it has exited; its parent has not
// reaped it yet), ...; 0 when there is no such process.
func ProcessState(pid int) byte {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// The state follows the command name, which is in parentheses and may hold any.
	i := bytes.LastIndexByte(stat, ')')
	if err != nil || i < 0 || i+2 >= len(stat) {
		return 0
	}
	return stat[i+2]
}

// Subtests runs each of tests as a subtest of t, named by its key, all at once (each
// a manager of its own, if it asks for one), and returns when they have all ended.
// When every one of them skipped (-short, no systemd), t skips too: a test whose
// subtests all skipped has tested nothing, and must not pass.
func Subtests(t *testing.T, tests map[string]func(t *testing.T)) {
	t.Helper()
	var ran atomic.Bool
	// Parallel subtests start once the function that started them has returned: this
	// one level more is what waits for them.
	t.Run("parallel", func(t *testing.T) {
		for name, test := range tests {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				test(t)
				ran.Store(true) // Not reached after a skip, nor after a failure.
			})
		}
	})
	if !ran.Load() && !t.Failed() {
		t.Skipf("all %d subtests skipped", len(tests))
	}
}

// processesWithEnv lists the processes whose environment holds entry; services of
// a user manager inherit its XDG_RUNTIME_DIR.
func processesWithEnv(entry string) []string {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	var found []string
	for _, path := range procs {
		data, err := os.ReadFile(path)
		if err != nil || !bytes.Contains(append([]byte{0}, data...), []byte("\x00"+entry+"\x00")) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "cmdline"))
		found = append(found, filepath.Base(filepath.Dir(path))+" "+
			string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
	}
	return found
}

// SkipOrFail skips t with msg, or fails it where DICE_REQUIRE_SYSTEMD=1 (CI): for what
// a test cannot do without, such as a real systemd or python3-flask.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("DICE_REQUIRE_SYSTEMD") == "1" {
		t.Fatal(msg + "\n(failing, not skipping, because DICE_REQUIRE_SYSTEMD=1)")
	} else {
		t.Skip(msg)
	}
}
