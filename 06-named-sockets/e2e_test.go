//go:build e2e

package main

// The tests in this file run units/06-named-sockets under a real systemd user manager
// of their own (package systemdtest): dice.socket on a free port of 127.0.0.1 and
// [::1] instead of 8080, dice-admin.socket where the unit puts it (%t, the manager's
// runtime directory), with -idle 3s.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

// stage is the stage's units installed under a private manager, not started.
type stage struct {
	m           *systemdtest.Manager
	ipv4, ipv6  string // base URLs of dice.socket
	admin       string // the path of dice-admin.socket
	hasIPv6Loop bool   // this machine's loopback has ::1
}

// installStage installs the units, with the stage's binary in bin (built here if
// ""), -idle 3s and dice.socket on a free port. The idle time is long enough for the
// checks that follow a first connection to find the same process on a loaded machine
// (each opens a connection of its own, and between two the idle clock runs).
func installStage(t *testing.T, bin string) *stage {
	t.Helper()
	m := systemdtest.New(t)
	if bin == "" {
		bin = systemdtest.BuildStage(t, "06-named-sockets")
	}
	require.NoError(t, m.InstallStage("06-named-sockets", bin, "", "-idle", "3s"))
	port := systemdtest.FreePort(t)
	s := &stage{m: m, ipv4: fmt.Sprintf("http://127.0.0.1:%d", port),
		ipv6: fmt.Sprintf("http://[::1]:%d", port), admin: m.RuntimeDir() + "/dice-admin.sock"}
	require.NoError(t, m.DropIn("dice.socket", "test", fmt.Sprintf(
		"[Socket]\nListenStream=\nListenStream=127.0.0.1:%d\nListenStream=[::1]:%d\n",
		port, port)))
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		s.hasIPv6Loop = true
	}
	return s
}

// start starts the socket units in the order given and checks that nothing runs.
func (s *stage) start(t *testing.T, units ...string) {
	t.Helper()
	for _, u := range units {
		s.m.MustSystemctl(t, "start", u)
		s.m.WaitProp(t, u, "SubState", "listening", 10*time.Second)
	}
	s.requireNoProcess(t)
}

func (s *stage) requireNoProcess(t *testing.T) {
	t.Helper()
	require.Equal(t, "inactive", s.m.Show(t, "dice.service", "ActiveState"))
	require.Equal(t, 0, s.m.MainPID(t, "dice.service"), "no process")
}

// fdNames is LISTEN_FDNAMES as systemd set it for the process pid (the program
// unsets it for itself, which /proc/<pid>/environ does not show).
func fdNames(t *testing.T, pid int) string {
	t.Helper()
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	require.NoError(t, err)
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "LISTEN_FDNAMES="); ok {
			return v
		}
	}
	return ""
}

// TestEverySocketStartsTheService proves the stage's promise under systemd: with the
// two socket units started in either order, nothing runs until a first connection;
// a connection on any socket (IPv4, IPv6, the unix one) starts the service, which
// answers rolls on TCP and /stats on the unix socket only, and exits 0 after -idle.
func TestEverySocketStartsTheService(t *testing.T) {
	t.Parallel()
	skipIfShort(t) // Before the build, which the subtests share.
	bin := systemdtest.BuildStage(t, "06-named-sockets")
	for _, order := range [][]string{{"dice.socket", "dice-admin.socket"},
		{"dice-admin.socket", "dice.socket"}} {
		runOrSkip(t, "start "+strings.Join(order, ", then "), func(t *testing.T) {
			s := installStage(t, bin)
			s.start(t, order...)
			first := map[string]func() int{
				"IPv4": func() int { return s.rollAndNoStats(t, s.ipv4) },
				"IPv6": func() int { return s.rollAndNoStats(t, s.ipv6) },
				"unix": func() int { return stats(t, s.admin).Pid },
			}
			for _, via := range []string{"unix", "IPv4", "IPv6"} {
				t.Run("first connection on "+via, func(t *testing.T) {
					if via == "IPv6" && !s.hasIPv6Loop {
						systemdtest.SkipOrFail(t, "this machine's loopback has no ::1")
					}
					s.requireNoProcess(t)
					pid := first[via]()
					assert.Equal(t, pid, s.m.MainPID(t, "dice.service"), "Dice-Pid is MainPID")
					t.Logf("LISTEN_FDNAMES=%s", fdNames(t, pid))
					// The same process answers on the other sockets.
					assert.Equal(t, pid, stats(t, s.admin).Pid, "/stats on the unix socket")
					assert.Equal(t, pid, s.rollAndNoStats(t, s.ipv4), "IPv4")
					if s.hasIPv6Loop {
						assert.Equal(t, pid, s.rollAndNoStats(t, s.ipv6), "IPv6")
					}
					s.m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
					assert.Equal(t, "success", s.m.Show(t, "dice.service", "Result"))
					assert.NoDirExists(t, fmt.Sprintf("/proc/%d", pid), "the process is gone")
					for _, u := range order {
						assert.Equal(t, "listening", s.m.Show(t, u, "SubState"), u)
					}
				})
			}
		})
	}
}

func skipIfShort(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no tests under a real systemd")
	}
}

// runOrSkip is t.Run, and skips t if f skipped (no systemd here): a parent whose
// subtests skip skips too.
func runOrSkip(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	skipped := false
	t.Run(name, func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		f(t)
	})
	if skipped {
		t.Skip("the subtest skipped:", name)
	}
}

// rollAndNoStats is GET /roll on base (200) and GET /stats there (404); it returns
// the Dice-Pid.
func (s *stage) rollAndNoStats(t *testing.T, base string) int {
	t.Helper()
	pid, err := dicetest.TryRoll(dicetest.NewConn, base)
	require.NoError(t, err, "GET /roll on %s", base)
	status, _, body, err := get(dicetest.NewConn, base+"/stats")
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, status, "/stats on %s: %s", base, body)
	return pid
}

// TestEveryFdOrderServes shows why the program goes by names: the order in which
// systemd passes the fds of two socket units is not defined. It is the order of a
// hash table of the units, which can change when the manager reloads its units (and
// from one manager or release to the next). The test starts the service from the
// unix socket, checks that the admin socket and IPv4 reach the same process, stops
// it and reloads, 8 times, and logs the orders it was given. The orders themselves
// are systemd's business; TestNamesNotOrder passes both on purpose.
func TestEveryFdOrderServes(t *testing.T) {
	t.Parallel()
	s := installStage(t, "")
	s.start(t, "dice.socket", "dice-admin.socket")
	seen := map[string]int{}
	for reload := 0; reload < 8; reload++ {
		pid := stats(t, s.admin).Pid
		assert.Equal(t, pid, s.rollAndNoStats(t, s.ipv4))
		seen[fdNames(t, pid)]++
		s.m.MustSystemctl(t, "stop", "dice.service")
		s.m.MustSystemctl(t, "daemon-reload")
	}
	t.Logf("LISTEN_FDNAMES seen: %v", seen)
}

// TestAdminSocketRefusesOtherUsers proves that the file's mode is the access
// control: a process of another user (nobody) connecting to the admin socket gets
// "permission denied" from the kernel, and, with SocketMode=0666 in a drop-in,
// the same process gets through. On the way to the socket, the test opens the
// directories for others (search only): a user's runtime directory, %t, is 0700,
// which alone keeps other users out; /run, %t of the system install, is not.
func TestAdminSocketRefusesOtherUsers(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("running a process as another user needs root")
	}
	nobody, err := user.Lookup("nobody")
	require.NoError(t, err)
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	s := installStage(t, "")
	s.start(t, "dice.socket", "dice-admin.socket")
	for dir := filepath.Dir(s.admin); dir != "/" && dir != os.TempDir(); dir = filepath.Dir(dir) {
		require.NoError(t, os.Chmod(dir, 0o711))
	}
	bin := asNobody(t)
	dial := func() (string, error) {
		cmd := exec.Command(bin)
		cmd.Env = []string{dialEnv + "=" + s.admin}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	fi, err := os.Stat(s.admin)
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket|0o600, fi.Mode(), "SocketMode=0600")
	out, err := dial()
	assert.Error(t, err)
	assert.Contains(t, out, "connect: permission denied", "uid %d (%v)", uid, err)
	s.requireNoProcess(t)

	require.NoError(t, s.m.DropIn("dice-admin.socket", "mode", "[Socket]\nSocketMode=0666\n"))
	s.m.MustSystemctl(t, "restart", "dice-admin.socket")
	fi, err = os.Stat(s.admin)
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket|0o666, fi.Mode(), "SocketMode=0666: systemd made it anew")
	out, err = dial()
	assert.NoError(t, err, out)
	assert.Contains(t, out, "200 OK", "uid %d gets through", uid)
}

// dialEnv, set in its environment, makes the test binary connect to that unix
// socket, GET /stats, print the status or the error, and exit.
const dialEnv = "DICE_DIAL_UNIX"

func init() {
	path := os.Getenv(dialEnv)
	if path == "" {
		return
	}
	resp, err := unixClient(path).Get("http://dice/stats")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	os.Exit(0)
}

// asNobody copies the test binary where any user may run it, and returns its path.
func asNobody(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dice-nobody-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	// cp writes it, not this process: a file open for writing here would be inherited
	// by the processes that parallel tests start, and running it would fail with "text
	// file busy" while one of them holds it (golang/go#22315).
	bin := filepath.Join(dir, "dial")
	out, err := exec.Command("cp", os.Args[0], bin).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// TestSocketFileBelongsToSystemd: the unix socket's file is systemd's. It stays,
// the same file, across the service's idle exits; stopping dice-admin.socket
// removes it (RemoveOnStop=yes), and starting it makes a new one. A program that
// removed it (as a program that made its own socket would at exit) would leave
// systemd listening on a socket no one can reach: connect fails with "no such file"
// until the socket unit is restarted.
func TestSocketFileBelongsToSystemd(t *testing.T) {
	t.Parallel()
	s := installStage(t, "")
	s.start(t, "dice-admin.socket", "dice.socket")
	inode := func() uint64 {
		fi, err := os.Stat(s.admin)
		require.NoError(t, err)
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	before := inode()
	first := stats(t, s.admin).Pid
	s.m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
	assert.Equal(t, before, inode(), "the same file after the idle exit")
	assert.NotEqual(t, first, stats(t, s.admin).Pid, "a new process answers")
	s.m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)

	s.m.MustSystemctl(t, "stop", "dice-admin.socket")
	assert.NoFileExists(t, s.admin, "RemoveOnStop=yes")
	s.start(t, "dice-admin.socket")
	inode() // systemd made a new file (whose inode number may be the old one's).

	require.NoError(t, os.Remove(s.admin))
	_, err := net.Dial("unix", s.admin)
	assert.ErrorIs(t, err, syscall.ENOENT, "nothing to connect to")
	assert.Equal(t, "listening", s.m.Show(t, "dice-admin.socket", "SubState"),
		"systemd does not notice")
	s.m.MustSystemctl(t, "restart", "dice-admin.socket")
	stats(t, s.admin)
}

// TestAdminSocketNeedsService shows the pitfall of a second socket unit: without
// Service=dice.service, systemd looks for the service of the socket's own name,
// dice-admin.service, and refuses to start the socket.
func TestAdminSocketNeedsService(t *testing.T) {
	t.Parallel()
	s := installStage(t, "")
	unit := filepath.Join(s.m.RuntimeDir(), "systemd", "user", "dice-admin.socket")
	b, err := os.ReadFile(unit)
	require.NoError(t, err)
	without := strings.Replace(string(b), "\nService=dice.service\n", "\n", 1)
	require.NotEqual(t, string(b), without, "the unit has Service=dice.service")
	require.NoError(t, os.WriteFile(unit, []byte(without), 0o644))
	s.m.MustSystemctl(t, "daemon-reload")

	out, err := s.m.Systemctl("start", "dice-admin.socket")
	assert.Error(t, err, "systemctl start dice-admin.socket: %s", out)
	assert.Equal(t, "dice-admin.service", s.m.Show(t, "dice-admin.socket", "Triggers"))
	assert.Equal(t, "not-found", s.m.Show(t, "dice-admin.service", "LoadState"))
	assert.NotEqual(t, "active", s.m.Show(t, "dice-admin.socket", "ActiveState"))
	var pathErr *net.OpError
	_, err = net.Dial("unix", s.admin)
	assert.True(t, errors.As(err, &pathErr), "nothing listens at %s: %v", s.admin, err)
}
