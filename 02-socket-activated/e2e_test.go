//go:build e2e

package main

// The tests in this file run units/02-socket-activated under a real systemd user
// manager of their own (package systemdtest), on a free port instead of 8080.

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
	"socket-dice/internal/systemdtest"
)

// TestSystemdSocketActivate is the no-units quick path from the README:
// systemd-socket-activate listens, and execs the stage on the first connection.
func TestSystemdSocketActivate(t *testing.T) {
	ssa := systemdtest.Need(t, "systemd-socket-activate")
	port := systemdtest.FreePort(t)
	cmd := exec.Command(ssa, "-l", fmt.Sprintf("127.0.0.1:%d", port),
		"-E", "DICE_RUN_MAIN=1", os.Args[0])
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", base[len("http://"):])
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "systemd-socket-activate listens")
	status, pid, a := dicetest.Roll(t, http.DefaultClient, base)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, cmd.Process.Pid, pid, "systemd-socket-activate execs the stage itself")
	assert.GreaterOrEqual(t, a.Result, 1)
}

// The tests below run units/02-socket-activated under a real systemd user manager
// of their own (package systemdtest), on a free port instead of 8080.

// startSocket installs the stage's units with the stage built from this directory and
// its flags args, starts dice.socket and returns the manager, the binary (its path is
// unique to the test) and the address systemd listens on.
func startSocket(t *testing.T, args ...string) (*systemdtest.Manager, string, string) {
	t.Helper()
	m := systemdtest.New(t)
	bin := systemdtest.BuildStage(t, "02-socket-activated")
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	require.NoError(t, m.InstallStage("02-socket-activated", bin, addr, args...))
	m.MustSystemctl(t, "start", "dice.socket")
	return m, filepath.Join(bin, "02-socket-activated"), addr
}

// TestFirstConnectionStartsTheService starts only dice.socket: systemd listens, and
// no dice process exists. The first connection starts dice.service, whose process
// answers (Dice-Pid is the unit's MainPID); that same process then answers every
// later connection, the whole bad-request table included.
func TestFirstConnectionStartsTheService(t *testing.T) {
	t.Parallel()
	m, binary, addr := startSocket(t)
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	assert.Equal(t, "inactive", m.Show(t, "dice.service", "ActiveState"))
	assert.Zero(t, m.MainPID(t, "dice.service"))
	assert.Empty(t, running(binary), "a dice process before the first connection")

	base := "http://" + addr
	status, pid, a := dicetest.Roll(t, dicetest.NewConn, base)
	require.Equal(t, http.StatusOK, status)
	assert.GreaterOrEqual(t, a.Result, 1)
	assert.LessOrEqual(t, a.Result, 6)
	m.WaitProp(t, "dice.service", "ActiveState", "active", 10*time.Second)
	assert.Equal(t, m.MainPID(t, "dice.service"), pid, "Dice-Pid is the unit's MainPID")
	assert.Equal(t, []int{pid}, running(binary), "exactly one dice process")
	assert.Equal(t, "running", m.Show(t, "dice.socket", "SubState"))

	for i := range 5 {
		status, answeredBy, _ := dicetest.Roll(t, dicetest.NewConn, base)
		assert.Equal(t, http.StatusOK, status, "roll %d", i)
		assert.Equal(t, pid, answeredBy, "roll %d, on a new connection", i)
	}
	t.Run("bad requests", func(t *testing.T) { dicetest.SendBadRequests(t, base) })
	status, answeredBy, _ := dicetest.Roll(t, dicetest.NewConn, base)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, pid, answeredBy, "the process that got the bad requests still serves")
	assert.Equal(t, pid, m.MainPID(t, "dice.service"))
}

// TestKilledServiceLosesNoConnection kills the service with SIGKILL, as a crash would.
// The listening socket is systemd's, so it stays open: dice.socket goes back to
// listening and the next connection starts a new process. Then the connections that
// arrive while no process serves: with the manager frozen (SIGSTOP), so that it
// cannot notice the death nor start anything, the service is killed again and 20
// requests are sent, each on a connection of its own. The kernel completes those
// connections in the listening socket's backlog; once the manager runs again, it
// starts one new process, which accepts and answers all 20.
func TestKilledServiceLosesNoConnection(t *testing.T) {
	t.Parallel()
	m, binary, addr := startSocket(t)
	base := "http://" + addr
	status, first, _ := dicetest.Roll(t, dicetest.NewConn, base)
	require.Equal(t, http.StatusOK, status)

	require.NoError(t, syscall.Kill(first, syscall.SIGKILL))
	m.WaitProp(t, "dice.service", "ActiveState", "failed", 10*time.Second)
	assert.Equal(t, "signal", m.Show(t, "dice.service", "Result"))
	assert.Zero(t, m.MainPID(t, "dice.service"))
	assert.Empty(t, running(binary), "no dice process after the kill")
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	status, second, _ := dicetest.Roll(t, dicetest.NewConn, base)
	require.Equal(t, http.StatusOK, status, "the next connection starts the service again")
	assert.NotEqual(t, first, second)
	assert.Equal(t, second, m.MainPID(t, "dice.service"))

	manager, err := os.FindProcess(m.Pid())
	require.NoError(t, err)
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", m.Pid()))
	require.NoError(t, err)
	require.Equal(t, "systemd", filepath.Base(exe), "m.Pid() is the manager itself")
	require.NoError(t, manager.Signal(syscall.SIGSTOP))
	// Should the test fail while the manager is frozen, the manager must still stop.
	t.Cleanup(func() { _ = manager.Signal(syscall.SIGCONT) })
	require.Eventually(t, func() bool { return systemdtest.ProcessState(m.Pid()) == 'T' },
		10*time.Second, 10*time.Millisecond, "the manager is frozen")
	require.NoError(t, syscall.Kill(second, syscall.SIGKILL))
	require.Eventually(t, func() bool { return len(running(binary)) == 0 },
		10*time.Second, 10*time.Millisecond,
		"the killed process is gone (a zombie: the frozen manager cannot reap it)")
	const n = 20
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		require.NoError(t, err, "connection %d, made while no process serves", i)
		t.Cleanup(func() { c.Close() })
		_, err = fmt.Fprintf(c, "GET /roll HTTP/1.1\r\nHost: dice\r\nConnection: close\r\n\r\n")
		require.NoError(t, err)
		conns[i] = c
	}
	assert.Empty(t, running(binary), "no process started while the manager is frozen")
	for i, c := range conns {
		accepted, err := stagetest.Accepted(c)
		require.NoError(t, err, "connection %d", i)
		assert.False(t, accepted, "connection %d waits in the backlog", i)
	}
	require.NoError(t, manager.Signal(syscall.SIGCONT))

	pids := map[int]int{}
	for i, c := range conns {
		require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if !assert.NoError(t, err, "connection %d", i) {
			continue
		}
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, "connection %d", i)
		pid, err := strconv.Atoi(resp.Header.Get("Dice-Pid"))
		assert.NoError(t, err, "Dice-Pid of connection %d", i)
		pids[pid]++
	}
	third := m.MainPID(t, "dice.service")
	assert.Equal(t, map[int]int{third: n}, pids, "one new process answered all %d", n)
	assert.NotContains(t, []int{0, first, second}, third)
	assert.Equal(t, "active", m.Show(t, "dice.service", "ActiveState"))
}

// TestStopFinishesTheRequestInFlight stops dice.service while a request is in flight:
// the SIGTERM that `systemctl stop` sends makes the service stop accepting, answer
// that request and exit 0, so that systemd records Result=success. The socket keeps
// listening.
func TestStopFinishesTheRequestInFlight(t *testing.T) {
	t.Parallel()
	m, binary, addr := startSocket(t)
	// From here the server's ReadHeaderTimeout (5 s) runs: the fewer calls, the better.
	finish := stagetest.InFlight(t, addr)
	m.MustSystemctl(t, "stop", "--no-block", "dice.service")
	m.WaitProp(t, "dice.service", "ActiveState", "deactivating", 10*time.Second)
	resp, err := finish()
	require.NoError(t, err, "the request in flight is answered")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, m.Show(t, "dice.service", "ExecMainPID"), resp.Header.Get("Dice-Pid"))
	m.WaitProp(t, "dice.service", "ActiveState", "inactive", 20*time.Second)
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"), "exit status 0 on SIGTERM")
	assert.Empty(t, running(binary))
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
}

// running lists the processes that run binary; a zombie runs nothing.
func running(binary string) []int {
	links, _ := filepath.Glob("/proc/[0-9]*/exe")
	var pids []int
	for _, link := range links {
		if exe, err := os.Readlink(link); err == nil && exe == binary {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(link)))
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// TestBusyPortFailsTheSocket: when another program holds the port, dice.socket cannot
// listen. `systemctl start` fails and the socket is `failed (Result: resources)`; the
// manager's log says "Address already in use". Freeing the port and starting again works.
func TestBusyPortFailsTheSocket(t *testing.T) {
	t.Parallel()
	m := systemdtest.New(t)
	squatter := stagetest.TCPListener(t)
	port := squatter.Addr().(*net.TCPAddr).Port
	bin := systemdtest.BuildStage(t, "02-socket-activated")
	require.NoError(t, m.InstallStage("02-socket-activated", bin, squatter.Addr().String()))

	out, err := m.Systemctl("start", "dice.socket")
	require.Error(t, err, "starting a socket on a busy port: %s", out)
	assert.Equal(t, "failed", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "resources", m.Show(t, "dice.socket", "Result"))

	require.NoError(t, squatter.Close())
	m.MustSystemctl(t, "reset-failed", "dice.socket")
	m.MustSystemctl(t, "start", "dice.socket")
	status, _, _ := dicetest.Roll(t, dicetest.NewConn, fmt.Sprintf("http://127.0.0.1:%d", port))
	assert.Equal(t, http.StatusOK, status)
}

// TestRestartsUnderLoadLoseNothing is a deploy: 6 restarts of dice.service, one
// after the other, while 4 clients on kept-alive connections and 4 on new connections
// call it. Not one request fails. Each restart's SIGTERM makes the old process finish
// what it has accepted; connections that arrive meanwhile wait in systemd's socket for
// the new process. The default start limit (5 starts in 10 s) would have failed the
// service and the socket at the 6th restart; the unit's StartLimitBurst= allows it.
func TestRestartsUnderLoadLoseNothing(t *testing.T) {
	t.Parallel()
	m, _, addr := startSocket(t)
	stagetest.RestartsUnderLoad(t, m, "http://"+addr, 6)
}

// TestCrashingServiceEndsFailed: a service that exits 1 at every start (here /bin/false
// in its place) is started again and again by the connection that waits in the
// socket, until a limit stops it: the service and the socket end failed, as they
// should, instead of looping forever. Two limits can: the service's start limit
// (StartLimitBurst=20; the test's drop-in makes its interval an hour, so that a slow
// machine reaches it too) and the socket's trigger limit (20 in 2 s by default), which
// a fast machine reaches first.
func TestCrashingServiceEndsFailed(t *testing.T) {
	t.Parallel()
	m, _, addr := startSocket(t)
	require.NoError(t, m.DropIn("dice.service", "test",
		"[Unit]\nStartLimitIntervalSec=1h\n[Service]\nExecStart=\nExecStart=/bin/false\n"))

	_, err := dicetest.TryRoll(dicetest.NewConn, "http://"+addr)
	assert.Error(t, err, "nothing answers")
	m.WaitProp(t, "dice.socket", "ActiveState", "failed", 60*time.Second)
	assert.Contains(t, []string{"service-start-limit-hit", "trigger-limit-hit"},
		m.Show(t, "dice.socket", "Result"))
	assert.Equal(t, "failed", m.Show(t, "dice.service", "ActiveState"))
	assert.Contains(t, []string{"start-limit-hit", "exit-code"},
		m.Show(t, "dice.service", "Result"))
}
