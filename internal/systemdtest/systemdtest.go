// Package systemdtest gives a test a real systemd user manager of its own.
//
// New starts a private `systemd --user` for one test and stops it when the test ends:
// a private mount namespace (`unshare -m`, or `unshare -rm` for a non-root user where
// user namespaces are allowed) with an empty tmpfs over /run/systemd holding only
// /run/systemd/system, fresh runtime and config directories, and a cgroup of its own.
// `systemctl --user` reaches it from outside through its XDG_RUNTIME_DIR (see
// Manager.Env). Tests never use the reader's own session manager, so they cannot leave
// units or processes there. What happens inside the namespace is the business of
// scripts/user-manager (its `_namespace` subcommand), the same as for `make run-stage`.
//
// There is no journald in the private manager. Services write to the manager's
// stdout and stderr (DefaultStandardOutput=inherit), and the manager's own messages
// ("Started dice.service.", "Trigger limit hit") go to /dev/kmsg, which the namespace
// replaces with a FIFO; both end up in one log file, shown by Manager.Log and printed
// when a test fails.
//
// Where no real systemd can be had, New skips the test with the reason, or fails it
// when DICE_REQUIRE_SYSTEMD=1.
package systemdtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	// startTimeout bounds how long New waits for the manager to answer; it usually
	// takes 0.1-0.3 s.
	startTimeout = 20 * time.Second
	// stopTimeout bounds each step of stopping the manager at the end of a test.
	stopTimeout = 15 * time.Second
	// commandTimeout bounds every systemctl call, so that a wedged manager fails the
	// test instead of hanging it.
	commandTimeout = 30 * time.Second
)

// userConf is the manager's configuration: services write into the manager's log
// file, and stopping a unit never waits the default 90 s.
const userConf = `[Manager]
DefaultStandardOutput=inherit
DefaultStandardError=inherit
DefaultTimeoutStopSec=10s
`

// Manager is a private systemd user manager that lives as long as one test.
type Manager struct {
	state   string        // runtime/, config/, data/, manager.log, manager.pid, cgroups, kmsg
	cmd     *exec.Cmd     // the manager: unshare, then bash, then systemd, one pid
	exited  chan struct{} // closed when the manager process has been reaped
	kmsg    *os.File      // our end of the /dev/kmsg FIFO
	copied  chan struct{} // closed when the kmsg copier is done
	logFile *os.File      // the log: service output and the manager's messages
	units   []string      // the units installed by InstallUnits, for the failure report
}

// New starts a private systemd user manager for t and stops it when t ends: its units
// are stopped, its processes are gone and its directories and cgroups removed. When
// t has failed by then, the unit status and the log are printed first.
func New(t testing.TB) *Manager {
	t.Helper()
	launcher, reason := preflight()
	if reason != "" {
		unavailable(t, "%s", reason)
	}
	collectStale()
	// A short path: the manager's socket $XDG_RUNTIME_DIR/systemd/private must fit
	// the 108 bytes of a unix socket address.
	state, err := os.MkdirTemp("", "dice-sd-")
	require.NoError(t, err)
	m := &Manager{state: state, exited: make(chan struct{}), copied: make(chan struct{})}
	t.Cleanup(func() { m.cleanup(t) })
	script := filepath.Join(ModuleRoot(t), "scripts", "user-manager")
	if err := m.start(launcher, script); err != nil {
		unavailable(t, "%v", err)
	}
	return m
}

// Env is os.Environ() with XDG_RUNTIME_DIR and XDG_CONFIG_HOME of this manager, for
// commands such as `systemctl --user`. DBUS_SESSION_BUS_ADDRESS is dropped: systemctl
// falls back to that bus when the manager does not answer, and it may be the
// reader's own session.
func (m *Manager) Env() []string {
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DBUS_SESSION_BUS_ADDRESS":
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"XDG_RUNTIME_DIR="+m.RuntimeDir(),
		"XDG_CONFIG_HOME="+filepath.Join(m.state, "config"))
}

// RuntimeDir is the manager's XDG_RUNTIME_DIR.
func (m *Manager) RuntimeDir() string { return filepath.Join(m.state, "runtime") }

// UnitDir is where the manager reads user units from: $XDG_CONFIG_HOME/systemd/user.
func (m *Manager) UnitDir() string { return filepath.Join(m.state, "config", "systemd", "user") }

// Pid is the manager's process id.
func (m *Manager) Pid() int { return m.cmd.Process.Pid }

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

// Show is `systemctl --user show -p prop --value unit`, without the final newline.
func (m *Manager) Show(t testing.TB, unit, prop string) string {
	t.Helper()
	out, err := m.systemctl(false, "show", "-p", prop, "--value", unit)
	require.NoError(t, err, "systemctl --user show -p %s %s: %s", prop, unit, out)
	return strings.TrimSuffix(string(out), "\n")
}

// MainPID is the main process of unit, 0 when it has none.
func (m *Manager) MainPID(t testing.TB, unit string) int {
	t.Helper()
	value := m.Show(t, unit, "MainPID")
	pid, err := strconv.Atoi(value)
	require.NoError(t, err, "MainPID of %s", unit)
	return pid
}

// WaitProp polls prop of unit until it is want, and fails the test with the value it
// last saw and the end of the log after timeout (the cleanup then prints the status
// of the installed units and the whole log).
func (m *Manager) WaitProp(t testing.TB, unit, prop, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := m.systemctl(false, "show", "-p", prop, "--value", unit)
		got := strings.TrimSuffix(string(out), "\n")
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			last := strconv.Quote(got)
			if err != nil {
				last = err.Error()
			}
			t.Fatalf("%s: %s is %s after %s, want %q\nlast lines of the log:\n%s",
				unit, prop, last, timeout, want, tail(m.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log is everything the services and the manager have written so far.
func (m *Manager) Log() string {
	data, err := os.ReadFile(filepath.Join(m.state, "manager.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}

// launcher is how to start the namespace: the command that precedes
// `bash scripts/user-manager _namespace STATE SYSTEMD`.
type launcher []string

// preflight finds out how to start a private manager here, or why it cannot be done.
func preflight() (launcher, string) {
	if runtime.GOOS != "linux" {
		return nil, "systemd runs on Linux only, this is " + runtime.GOOS
	}
	if systemdBinary() == "" {
		return nil, "no systemd binary at /usr/lib/systemd/systemd or /lib/systemd/systemd"
	}
	for _, tool := range []string{"systemctl", "unshare", "mount", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Sprintf("%s not found: %v", tool, err)
		}
	}
	unshare := launcher{"unshare", "-m", "--propagation", "private"}
	if os.Geteuid() != 0 {
		unshare = launcher{"unshare", "-rm", "--propagation", "private"}
		if out, err := exec.Command("unshare", "-rm", "true").CombinedOutput(); err != nil {
			return nil, fmt.Sprintf("user namespaces are not allowed for uid %d (unshare -rm: "+
				"%v %s); run the tests as root, or in a systemd login session",
				os.Geteuid(), err, bytes.TrimSpace(out))
		}
		// In the reader's own session a transient scope with Delegate=yes gives the
		// private manager a cgroup it may write to; the scope is gone with the manager.
		// systemd-run finds that session's manager through XDG_RUNTIME_DIR.
		if own := ownRuntimeDir(); own != "" {
			if _, err := exec.LookPath("systemd-run"); err == nil {
				scope := launcher{"env", "-u", "DBUS_SESSION_BUS_ADDRESS",
					"XDG_RUNTIME_DIR=" + own, "systemd-run", "--user",
					"--scope", "--quiet", "--collect", "-p", "Delegate=yes",
					"--description=socket-dice test systemd", "--"}
				return append(scope, unshare...), ""
			}
		}
	}
	for _, dir := range cgroupDirs() {
		for _, path := range []string{dir, filepath.Join(dir, "cgroup.procs")} {
			if err := syscall.Access(path, 2 /* W_OK */); err != nil {
				return nil, fmt.Sprintf("systemd --user needs a cgroup it may write to, and "+
					"%s is not writable for uid %d (%v); run the tests as root, in a systemd "+
					"login session, or in a cgroup delegated to uid %[2]d",
					path, os.Geteuid(), err)
			}
		}
	}
	return unshare, ""
}

// unavailable skips t because no real systemd can be had, or fails it when
// DICE_REQUIRE_SYSTEMD=1.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	skipOrFail(t, "no real systemd user manager: "+fmt.Sprintf(format, args...))
}

// Need returns the path of a systemd tool the test cannot do without, such as
// systemd-analyze or systemd-socket-activate. When it is missing the test is
// skipped, or fails where DICE_REQUIRE_SYSTEMD=1 (CI).
func Need(t testing.TB, program string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err != nil {
		skipOrFail(t, program+" is not installed (it comes with systemd)")
	}
	return path
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("DICE_REQUIRE_SYSTEMD") == "1" {
		t.Fatal(msg + "\n(failing, not skipping, because DICE_REQUIRE_SYSTEMD=1)")
	} else {
		t.Skip(msg)
	}
}

// systemdBinary is the path of the systemd binary, or "" when there is none.
func systemdBinary() string {
	for _, path := range []string{"/usr/lib/systemd/systemd", "/lib/systemd/systemd"} {
		if info, err := os.Stat(path); err == nil && info.Mode()&0o111 != 0 {
			return path
		}
	}
	return ""
}

// ownRuntimeDir is the XDG_RUNTIME_DIR of the caller's own session manager, or "" when
// it does not run.
func ownRuntimeDir() string {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		dir = fmt.Sprintf("/run/user/%d", os.Getuid())
	}
	if _, err := os.Stat(dir); err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "systemctl", "--user", "show", "-p", "SystemState", "--value")
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir)
	out, err := cmd.Output()
	state := strings.TrimSpace(string(out))
	if err != nil || (state != "running" && state != "degraded") {
		return ""
	}
	return dir
}

// cgroupDirs are the directories of the current cgroup, one per hierarchy that
// systemd uses: name=systemd (legacy and hybrid) and the unified one.
func cgroupDirs() []string {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	var dirs []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.SplitN(line, ":", 3)
		if len(fields) != 3 {
			continue
		}
		switch fields[1] {
		case "name=systemd":
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup/systemd", fields[2]))
		case "":
			base := "/sys/fs/cgroup"
			if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
				base = "/sys/fs/cgroup/unified"
			}
			dirs = append(dirs, filepath.Join(base, fields[2]))
		}
	}
	return dirs
}

// start launches the manager with l and the namespace side of script, and waits until
// it answers.
func (m *Manager) start(l launcher, script string) error {
	for _, dir := range []string{"runtime", "config/systemd/user", "data"} {
		if err := os.MkdirAll(filepath.Join(m.state, dir), 0o700); err != nil {
			return err
		}
	}
	conf := filepath.Join(m.state, "config", "systemd", "user.conf")
	if err := os.WriteFile(conf, []byte(userConf), 0o644); err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(m.state, "manager.log"),
		os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	m.logFile = logFile
	if err := m.readKmsg(); err != nil {
		return err
	}

	// The script finds the FIFO made by readKmsg and leaves the reading to us. It drops
	// what belongs to the caller's own session from the environment the units inherit.
	args := append(append([]string{}, l...), "bash", script, "_namespace", m.state,
		systemdBinary())
	m.cmd = exec.Command(args[0], args[1:]...)
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	// If the test binary dies without its cleanups (a panic, a timeout), SIGTERM makes
	// the manager stop its units and exit; its cgroups and directories stay behind.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := m.cmd.Start(); err != nil {
		close(m.exited)
		return fmt.Errorf("starting %s: %w", strings.Join(l, " "), err)
	}
	go func() {
		_ = m.cmd.Wait()
		close(m.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		out, err := m.systemctl(false, "show", "-p", "SystemState", "--value")
		state := strings.TrimSpace(string(out))
		if err == nil && (state == "running" || state == "degraded") {
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("the private manager exited (%v) at start:\n%s",
				m.cmd.ProcessState, m.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the private manager did not answer within %s (state %q, %v):\n%s",
				startTimeout, state, err, m.Log())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// readKmsg creates the FIFO that stands in for /dev/kmsg and copies what the manager
// writes there into the log, without the "<30>" priority prefix. The FIFO is opened
// for reading and writing, so that the manager's open never blocks and our read
// never sees the end of the file.
func (m *Manager) readKmsg() error {
	path := filepath.Join(m.state, "kmsg")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("mkfifo %s: %w", path, err)
	}
	fifo, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	m.kmsg = fifo
	go func() {
		defer close(m.copied)
		lines := bufio.NewScanner(fifo)
		for lines.Scan() {
			line := lines.Text()
			if strings.HasPrefix(line, "<") {
				if i := strings.IndexByte(line, '>'); i > 0 {
					line = line[i+1:]
				}
			}
			_, _ = io.WriteString(m.logFile, line+"\n")
		}
	}()
	return nil
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

// cleanup reports on a failed test, stops the manager, makes sure none of its
// processes is left and removes its cgroups and directories.
func (m *Manager) cleanup(t testing.TB) {
	t.Helper()
	running := m.cmd != nil && m.cmd.Process != nil
	if running && t.Failed() {
		m.report(t)
	}
	if running {
		m.stop(t)
	}
	leftovers, err := removeCgroups(m.state)
	assert.NoError(t, err)
	assert.Empty(t, leftovers, "processes of the private manager were still running")
	if m.kmsg != nil {
		_ = m.kmsg.Close()
		<-m.copied
	}
	if m.logFile != nil {
		_ = m.logFile.Close()
	}
	assert.Empty(t, processesWithEnv("XDG_RUNTIME_DIR="+m.RuntimeDir()),
		"processes of the private manager outlived it")
	assert.NoError(t, os.RemoveAll(m.state))
}

// report prints the status of the installed units and the log.
func (m *Manager) report(t testing.TB) {
	t.Helper()
	args := []string{"list-units", "--all", "--no-pager"}
	if len(m.units) > 0 {
		args = append([]string{"status", "--no-pager", "--full"}, m.units...)
	}
	status, _ := m.Systemctl(args...)
	t.Logf("systemctl --user %s:\n%s", strings.Join(args, " "), status)
	t.Logf("log of the private manager (services and systemd):\n%s", m.Log())
}

// stop asks the manager to stop its units and exit, then insists.
func (m *Manager) stop(t testing.TB) {
	t.Helper()
	// The units go first: systemd removes their PrivateTmp= directories in a thread,
	// which `exit` could cut short, leaving the directories in /tmp.
	if out, err := m.Systemctl("stop", "*.service", "*.socket"); err != nil {
		t.Logf("systemctl --user stop: %v: %s", err, out)
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", m.Pid())); err != nil ||
			len(tasks) == 1 {
			break
		}
	}
	if out, err := m.Systemctl("exit"); err != nil {
		t.Logf("systemctl --user exit: %v: %s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		select {
		case <-m.exited:
			return
		case <-time.After(stopTimeout):
			t.Errorf("the private manager (pid %d) did not exit within %s; sending %v",
				m.Pid(), stopTimeout, sig)
			_ = m.cmd.Process.Signal(sig)
		}
	}
	<-m.exited
}

// removeCgroups kills what is left in the cgroups of the manager whose state
// directory is state, removes them and returns the processes it had to kill.
func removeCgroups(state string) (killed []string, err error) {
	data, _ := os.ReadFile(filepath.Join(state, "cgroups"))
	for _, root := range strings.Fields(string(data)) {
		// Only a cgroup scripts/user-manager made: killing all in another could be fatal.
		if !strings.HasPrefix(filepath.Base(root), "socket-dice-") ||
			!strings.HasPrefix(root, "/sys/fs/cgroup/") {
			err = errors.Join(err, fmt.Errorf("not a cgroup of a private manager: %s", root))
			continue
		}
		dirs := cgroupTree(root)
		for _, dir := range dirs {
			for _, pid := range cgroupPids(dir) {
				killed = append(killed, fmt.Sprintf("%d %s", pid, cmdline(pid)))
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		// The deepest first: a cgroup can only be removed once it has no children.
		for i := len(dirs) - 1; i >= 0; i-- {
			if rmErr := removeCgroup(dirs[i]); rmErr != nil {
				err = errors.Join(err, fmt.Errorf("removing cgroup %s: %w", dirs[i], rmErr))
			}
		}
	}
	return killed, err
}

// collectStale removes what the managers of killed test binaries (a -timeout, say)
// left behind: the parent-death signal stopped them, but their state directories and
// cgroups remain. A manager that still runs, or has no pid file yet, is left alone.
func collectStale() {
	states, _ := filepath.Glob(filepath.Join(os.TempDir(), "dice-sd-*"))
	for _, state := range states {
		data, err := os.ReadFile(filepath.Join(state, "manager.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || alive(pid) {
			continue
		}
		if _, err := removeCgroups(state); err == nil {
			_ = os.RemoveAll(state)
		}
	}
}

// alive tells whether process pid runs; a zombie does not.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// cgroupTree is root and every cgroup below it, parents before children.
func cgroupTree(root string) []string {
	var dirs []string
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	return dirs
}

// cgroupPids are the processes in cgroup dir.
func cgroupPids(dir string) []int {
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, field := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(field); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroup removes an empty cgroup, waiting a little for killed processes to go.
func removeCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processesWithEnv lists the processes whose environment holds entry; services of
// a user manager inherit its XDG_RUNTIME_DIR.
func processesWithEnv(entry string) []string {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	var found []string
	for _, path := range procs {
		data, err := os.ReadFile(path)
		if err != nil || !bytes.Contains(data, []byte("\x00"+entry+"\x00")) &&
			!bytes.HasPrefix(data, []byte(entry+"\x00")) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		found = append(found, fmt.Sprintf("%d %s", pid, cmdline(pid)))
	}
	return found
}

// cmdline is the command line of pid, for messages.
func cmdline(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(string(bytes.ReplaceAll(data, []byte{0}, []byte{' '})))
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
