//go:build e2e

package main

// The tests in this file run units/03-idle-exit under a real systemd user manager of
// their own (package systemdtest), on a free port instead of 8080, with a shorter
// -idle where they say so.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice"
	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
	"socket-dice/internal/systemdtest"
)

// startStage installs the stage's units under a private systemd user manager, with
// args appended to ExecStart= (the last -idle wins) and dropIn, if not empty, as a
// drop-in of dice.service; starts dice.socket only, and returns the manager and the
// service's base URL.
func startStage(t *testing.T, dropIn string, args ...string) (*systemdtest.Manager, string) {
	t.Helper()
	m := systemdtest.New(t)
	bin := systemdtest.BuildStage(t, "03-idle-exit")
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	require.NoError(t, m.InstallStage("03-idle-exit", bin, addr, args...))
	if dropIn != "" {
		require.NoError(t, m.DropIn("dice.service", "test", dropIn))
	}
	m.MustSystemctl(t, "start", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	require.Equal(t, "inactive", m.Show(t, "dice.service", "ActiveState"),
		"nothing runs before the first connection")
	return m, "http://" + addr
}

// socketState is dice.socket's ActiveState and SubState, from one systemctl call so
// that they describe the same moment.
func socketState(t *testing.T, m *systemdtest.Manager) string {
	t.Helper()
	out := m.MustSystemctl(t, "show", "-p", "ActiveState", "-p", "SubState", "dice.socket")
	return strings.Join(strings.Fields(out), " ")
}

// TestIdleExitUnderSystemd proves the stage's promise: a connection starts the
// service, it exits 0 on its own -idle after the last connection closed (systemd
// records a clean exit, not a failure), dice.socket goes on listening, and the next
// connection is answered by a new process.
func TestIdleExitUnderSystemd(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "", "-idle", "300ms")

	// A keep-alive connection holds the service while we look at it.
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer c.Close()
	_, err = fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	pid, err := strconv.Atoi(resp.Header.Get("Dice-Pid"))
	require.NoError(t, err)
	assert.DirExists(t, fmt.Sprintf("/proc/%d", pid), "the process runs")
	assert.Equal(t, pid, m.MainPID(t, "dice.service"), "Dice-Pid is the unit's MainPID")
	assert.Equal(t, "active", m.Show(t, "dice.service", "ActiveState"))

	require.NoError(t, c.Close())
	closed := time.Now()
	m.WaitProp(t, "dice.service", "ActiveState", "inactive", 10*time.Second)
	t.Logf("with -idle 300ms the process exited %s after the last connection closed "+
		"(seen by polling after %s)", m.Timestamp(t, "dice.service",
		"ExecMainExitTimestamp").Sub(closed).Round(time.Millisecond),
		time.Since(closed).Round(time.Millisecond))
	assert.NoDirExists(t, fmt.Sprintf("/proc/%d", pid), "the process is gone")
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"))
	assert.Equal(t, "0", m.Show(t, "dice.service", "ExecMainStatus"), "exit status 0")
	assert.Equal(t, "1", m.Show(t, "dice.service", "ExecMainCode"), "CLD_EXITED, no signal")
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))

	next, err := dicetest.TryRoll(dicetest.NewConn, base)
	require.NoError(t, err, "the next connection starts the service again")
	assert.NotEqual(t, pid, next, "a new process answers")
}

// TestChurnReactivatesWithoutLoss proves that idle exits and re-activations can
// follow each other quickly, over and over: 30 times a request, each on a new
// connection, then a wait until the service has exited idle (-idle 200ms). Every
// request is answered, by 30 different processes, and dice.socket never leaves the
// listening (or, while an instance runs, running) state.
func TestChurnReactivatesWithoutLoss(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "", "-idle", "200ms")
	pids := map[int]bool{}
	socketStates := map[string]int{}
	var failed []error
	start := time.Now()
	for range 30 {
		pid, err := dicetest.TryRoll(dicetest.NewConn, base)
		if err != nil {
			failed = append(failed, err)
		} else {
			pids[pid] = true
		}
		socketStates[socketState(t, m)]++ // An instance runs: "running".
		m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
		socketStates[socketState(t, m)]++ // It has exited: "listening".
	}
	t.Logf("30 re-activations in %s; dice.socket seen as %v",
		time.Since(start).Round(time.Millisecond), socketStates)
	assert.Empty(t, failed, "failed requests")
	assert.Len(t, pids, 30, "distinct Dice-Pids")
	for state := range socketStates {
		assert.Contains(t, []string{"ActiveState=active SubState=listening",
			"ActiveState=active SubState=running"}, state, "dice.socket")
	}
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"))
}

// TestBurstsDuringIdleExitLoseNothing proves that the idle exit is race-free: 16
// clients connect right as the idle timer of the running instance fires, 20 times.
// The moment is made, not aimed at, so that no machine is too slow to hit it: each
// round stops the process (SIGSTOP) before its timer is due, connects the 16 clients
// and sends their requests while it is stopped and its timer overdue (the connections
// wait in systemd's socket), then lets it go on (SIGCONT). The timer fires and the
// waiting connections are there at the same instant: those the old instance accepts
// before it closes its listener are answered by it, the others by the next instance.
// Not one may fail.
func TestBurstsDuringIdleExitLoseNothing(t *testing.T) {
	t.Parallel()
	const idle, clients, rounds = 300 * time.Millisecond, 16, 20
	m, base := startStage(t, "", "-idle", idle.String())
	var failed []error
	var byOld, byNew, byBoth int // rounds whose burst only the old instance answered, ...
	for round, tries := 0, 1; round < rounds; tries++ {
		require.LessOrEqual(t, tries, 2*rounds, "rounds whose process exited before it stopped")
		pid, closed, err := dicetest.RollAndWaitForClose(base)
		require.NoError(t, err, "round %d, first request", round)
		// A loaded machine may stop the process only after its timer fired, or not
		// before it exited: such a try tells nothing, and is made again.
		if syscall.Kill(pid, syscall.SIGSTOP) != nil || !stopped(t, pid) {
			m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
			continue
		}
		time.Sleep(time.Until(closed.Add(idle))) // Its timer is due.
		var conns []net.Conn
		for range clients {
			c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
			require.NoError(t, err)
			_, err = fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\nConnection: close\r\n\r\n")
			require.NoError(t, err)
			conns = append(conns, c)
		}
		require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
		old, other := false, false
		for i, c := range conns {
			answer, err := readRoll(c)
			c.Close()
			if err != nil {
				failed = append(failed, fmt.Errorf("round %d, client %d: %w", round, i, err))
			}
			old, other = old || answer == pid, other || err == nil && answer != pid
		}
		switch {
		case old && other:
			byBoth++
		case old:
			byOld++
		default:
			byNew++
		}
		m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
		round++
	}
	t.Logf("%d rounds of 1+%d requests: %d failed; bursts answered by the old instance: %d, "+
		"by a new one: %d, by both: %d", rounds, clients, len(failed), byOld, byNew, byBoth)
	assert.Empty(t, failed, "failed requests")
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"))
}

// stopped waits until process pid has stopped (SIGSTOP), and tells whether it has: not
// if it exited first.
func stopped(t *testing.T, pid int) bool {
	t.Helper()
	var state byte
	require.Eventually(t, func() bool {
		state = systemdtest.ProcessState(pid)
		return state == 'T' || state == 'Z' || state == 0
	}, 10*time.Second, time.Millisecond, "process %d stops or exits", pid)
	return state == 'T'
}

// readRoll reads the answer to a GET /roll sent on c: the Dice-Pid of a good one.
func readRoll(c net.Conn) (pid int, err error) {
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var a dice.Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.Result < 1 || a.Result > 6 {
		return 0, fmt.Errorf("status %d, result %d, %v", resp.StatusCode, a.Result, err)
	}
	return strconv.Atoi(resp.Header.Get("Dice-Pid"))
}

// TestOnlyARealClientHoldsTheService proves that the idle timer counts connections
// the right way: a keep-alive connection that keeps sending requests holds the
// service well past -idle (one process answers them all), while a client that
// connects and sends nothing is cut off after dice.ReadHeaderTimeout, and the
// service exits -idle later.
func TestOnlyARealClientHoldsTheService(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "", "-idle", "300ms")
	addr := strings.TrimPrefix(base, "http://")

	t.Run("keep-alive connection in use", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		r := bufio.NewReader(c)
		pids := map[string]int{}
		start := time.Now()
		for time.Since(start) < 4*300*time.Millisecond {
			_, err := fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\n\r\n")
			require.NoError(t, err)
			resp, err := http.ReadResponse(r, nil)
			require.NoError(t, err, "a request on the kept-alive connection")
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			pids[resp.Header.Get("Dice-Pid")]++
			time.Sleep(100 * time.Millisecond)
		}
		require.Len(t, pids, 1, "one process answered every request: %v", pids)
		for pid := range pids {
			assert.Equal(t, pid, strconv.Itoa(m.MainPID(t, "dice.service")))
		}
		require.NoError(t, c.Close())
		m.WaitProp(t, "dice.service", "ActiveState", "inactive", 10*time.Second)
	})

	t.Run("silent connection", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		connected := time.Now()
		m.WaitProp(t, "dice.service", "ActiveState", "active", 10*time.Second)
		limit := dice.ReadHeaderTimeout + 300*time.Millisecond
		m.WaitProp(t, "dice.service", "ActiveState", "inactive", limit+10*time.Second)
		t.Logf("a silent client held the service for %s (ReadHeaderTimeout + idle = %s)",
			m.Timestamp(t, "dice.service", "ExecMainExitTimestamp").Sub(connected).
				Round(time.Millisecond), limit)
		assert.Equal(t, "success", m.Show(t, "dice.service", "Result"))
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
		assert.ErrorIs(t, err, io.EOF, "the server closed the silent connection")
	})
}

// TestDefaultStartLimitFailsTheSocket shows why dice.service sets StartLimitBurst=:
// with systemd's default burst of 5 starts the same churn as above fails the
// service at its 6th start, and dice.socket with it. The socket stops listening and
// requests are refused until someone restarts it. (The default interval is 10 s;
// the test's drop-in makes it an hour, so that a slow machine hits the limit too.)
func TestDefaultStartLimitFailsTheSocket(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "[Unit]\nStartLimitIntervalSec=1h\nStartLimitBurst=5\n",
		"-idle", "200ms")
	require.Equal(t, "1h", m.Show(t, "dice.service", "StartLimitIntervalUSec"))

	pids := map[int]bool{}
	var failed []error
	for range 10 {
		if m.Show(t, "dice.socket", "ActiveState") == "failed" {
			break
		}
		pid, err := dicetest.TryRoll(dicetest.NewConn, base)
		if err != nil {
			failed = append(failed, err)
			continue
		}
		pids[pid] = true
		m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
	}
	t.Logf("%d processes answered, failed requests: %v", len(pids), failed)
	m.WaitProp(t, "dice.socket", "ActiveState", "failed", 10*time.Second)
	assert.Equal(t, "service-start-limit-hit", m.Show(t, "dice.socket", "Result"))
	assert.Equal(t, "failed", m.Show(t, "dice.service", "ActiveState"))
	assert.Equal(t, "start-limit-hit", m.Show(t, "dice.service", "Result"))
	assert.Len(t, pids, 5, "5 starts were allowed, the 6th was not")
	assert.NotEmpty(t, failed, "the connection that asked for the 6th start was dropped")
	_, err := dicetest.TryRoll(dicetest.NewConn, base)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED, "nothing listens any more")
}

// TestStatusLine proves that the service keeps systemd informed (Type=notify,
// STATUS=): `systemctl --user status dice.service` shows how many rolls it served.
func TestStatusLine(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "") // The unit's own -idle 30s.
	client := dicetest.NewConn
	for range 3 {
		_, err := dicetest.TryRoll(client, base)
		require.NoError(t, err)
	}
	const want = "served 3 rolls; 0 connections open; exits after 30s idle"
	m.WaitProp(t, "dice.service", "StatusText", want, 10*time.Second)
	status, _ := m.Systemctl("status", "--no-pager", "dice.service")
	assert.Contains(t, status, `Status: "`+want+`"`)
	assert.Contains(t, status, "Active: active (running)")
}

// TestBadRequestsUnderSystemd sends every bad request to the socket-activated
// service: each gets its 4xx JSON error, and the same process goes on serving.
func TestBadRequestsUnderSystemd(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "") // The unit's own -idle 30s.
	defer http.DefaultClient.CloseIdleConnections()
	pid, err := dicetest.TryRoll(dicetest.NewConn, base)
	require.NoError(t, err)
	dicetest.SendBadRequests(t, base)
	after, err := dicetest.TryRoll(dicetest.NewConn, base)
	require.NoError(t, err)
	assert.Equal(t, pid, after, "bad requests did not end the service")
	assert.Equal(t, pid, m.MainPID(t, "dice.service"))
}

// TestRestartsUnderLoadLoseNothing is a deploy: 6 restarts of dice.service, one after
// the other, while 4 clients on kept-alive connections and 4 on new connections call
// it. Not one request fails, and the unit's start limit leaves room for the restarts
// on top of the idle exits.
func TestRestartsUnderLoadLoseNothing(t *testing.T) {
	t.Parallel()
	m, base := startStage(t, "") // The unit's own -idle 30s.
	stagetest.RestartsUnderLoad(t, m, base, 6)
}
