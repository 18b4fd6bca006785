//go:build e2e

package main

// The tests in this file run units/07-fd-store under a real systemd user manager of
// their own (package systemdtest), on a free port instead of 8080, with a shorter
// -idle where they say so.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	m, base, _ := startStageIn(t, dropIn, args...)
	return m, base
}

// startStageIn is startStage that also returns the directory of the service's binary.
func startStageIn(t *testing.T, dropIn string, args ...string) (*systemdtest.Manager,
	string, string) {
	t.Helper()
	m := systemdtest.New(t)
	bin := systemdtest.BuildStage(t, "07-fd-store")
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	require.NoError(t, m.InstallStage("07-fd-store", bin, addr, args...))
	if dropIn != "" {
		require.NoError(t, m.DropIn("dice.service", "test", dropIn))
	}
	m.MustSystemctl(t, "start", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	require.Equal(t, "inactive", m.Show(t, "dice.service", "ActiveState"),
		"nothing runs before the first connection")
	return m, "http://" + addr, bin
}

// TestIdleExitUnderSystemd proves the stage's promise: a connection starts the
// service, it exits 0 on its own -idle after the last connection closed (systemd
// records a clean exit, not a failure), dice.socket goes on listening, and the next
// connection is answered by a new process.
func TestIdleExitUnderSystemd(t *testing.T) {
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

// TestStatusLine proves that the service keeps systemd informed (Type=notify,
// STATUS=): `systemctl --user status dice.service` shows how many rolls it served.
func TestStatusLine(t *testing.T) {
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
	m, base := startStage(t, "") // The unit's own -idle 30s.
	stagetest.RestartsUnderLoad(t, m, base, 6)
}

// stored is how many file descriptors systemd holds in dice.service's store.
func stored(t *testing.T, m *systemdtest.Manager) string {
	t.Helper()
	return m.Show(t, "dice.service", "NFileDescriptorStore")
}

// pidOf reads the Dice-Pid of an answer.
func pidOf(t *testing.T, c net.Conn, r *bufio.Reader, count int) int {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
	_, err := fmt.Fprintf(c, "GET /roll?count=%d HTTP/1.1\r\nHost: dice\r\n\r\n", count)
	require.NoError(t, err)
	return pidOfAnswer(t, r, count)
}

// pidOfAnswer reads an answer with count rolls and returns its Dice-Pid.
func pidOfAnswer(t *testing.T, r *bufio.Reader, count int) int {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	var a dice.Answer
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&a))
	require.Len(t, a.Rolls, count, "the answer to the request for %d rolls", count)
	assert.False(t, resp.Close, "the server keeps the connection")
	pid, err := strconv.Atoi(resp.Header.Get("Dice-Pid"))
	require.NoError(t, err)
	return pid
}

// TestRestartKeepsTheConnection is the stage's promise: one TCP connection, a
// request, `systemctl restart dice.service`, and a second request on the same
// connection, answered by the new process. The new process took the connection out
// of the store (FDSTOREREMOVE=1): systemd holds none of it any more.
func TestRestartKeepsTheConnection(t *testing.T) {
	m, base := startStage(t, "")
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	port := c.LocalAddr().(*net.TCPAddr).Port
	before := pidOf(t, c, r, 1)
	assert.Equal(t, before, m.MainPID(t, "dice.service"))

	m.MustSystemctl(t, "restart", "dice.service")
	after := pidOf(t, c, r, 2)
	t.Logf("local port %d: Dice-Pid %d, then %d after the restart", port, before, after)
	assert.NotEqual(t, before, after, "a new process answers")
	assert.Equal(t, after, m.MainPID(t, "dice.service"))
	assert.Equal(t, port, c.LocalAddr().(*net.TCPAddr).Port, "on the same connection")
	assert.Equal(t, "0", stored(t, m), "the new process took it out of the store")
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"), "the old one exited 0")
}

// TestARequestBegunAtTheHandoverIsAnsweredOnce: a restart comes while connection a
// has sent all of a request but its last line, and the service has read it
// (stagetest.InFlight holds requests this way); b waits idle. b goes to the store at
// once, a only after the old process has answered its request, once: a's next
// request gets the next answer, from the new process.
func TestARequestBegunAtTheHandoverIsAnsweredOnce(t *testing.T) {
	m, base := startStage(t, "")
	addr := strings.TrimPrefix(base, "http://")
	a, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer a.Close()
	ra := bufio.NewReader(a)
	b, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer b.Close()
	rb := bufio.NewReader(b)
	old := pidOf(t, a, ra, 1)
	require.Equal(t, old, pidOf(t, b, rb, 1))

	_, err = fmt.Fprint(a, "GET /roll?count=2 HTTP/1.1\r\nHost: dice\r\n")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return readByServer(a) }, 20*time.Second,
		10*time.Millisecond, "the service reads what a sent")
	m.MustSystemctl(t, "restart", "--no-block", "dice.service")
	m.WaitProp(t, "dice.service", "NFileDescriptorStore", "1", 30*time.Second)
	assert.Equal(t, "deactivating", m.Show(t, "dice.service", "ActiveState"),
		"the old process waits for a's request")

	_, err = fmt.Fprint(a, "\r\n")
	require.NoError(t, err)
	assert.Equal(t, old, pidOfAnswer(t, ra, 2), "the process that read it answers it")
	// A request sent at once could still reach the old process (net/http reads ahead
	// a byte while it answers; then it serves that request too). Wait for the new one.
	m.WaitProp(t, "dice.service", "ActiveState", "active", 30*time.Second)
	next := pidOf(t, a, ra, 3) // Had it been answered twice, this would read 2 rolls.
	assert.NotEqual(t, old, next)
	assert.Equal(t, next, pidOf(t, b, rb, 4))
	assert.Equal(t, next, m.MainPID(t, "dice.service"))
}

// TestStopEndsTheStore: `systemctl stop` is not a restart. The process hands its
// connections over as for a restart, but no job follows, and systemd closes the
// store: the client reads the end of its connection. So on every release: systemd
// 254+ has FileDescriptorStorePreserve=, whose default, restart, does just this.
func TestStopEndsTheStore(t *testing.T) {
	m, base := startStage(t, "")
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	before := pidOf(t, c, r, 1)
	if preserve, err := m.Prop("dice.service", "FileDescriptorStorePreserve"); err == nil &&
		preserve != "" {
		assert.Equal(t, "restart", preserve, "systemd 254+")
	}

	m.MustSystemctl(t, "stop", "dice.service")
	assert.Equal(t, "0", stored(t, m))
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = r.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "systemd closed the stored connection")
	m.MustSystemctl(t, "start", "dice.service")
	after, err := dicetest.TryRoll(dicetest.NewConn, base)
	require.NoError(t, err, "a new connection is answered")
	assert.NotEqual(t, before, after)
}

// TestKeptAliveClientsSeeNoRestart: 16 clients, each on one kept-alive connection
// that it never replaces unless it fails, call the service through 6 restarts and an
// upgrade (a new binary, then a restart). Not one request fails, not one client has
// to reconnect. The same clients lose requests with stage 03 (make bench shows both).
func TestKeptAliveClientsSeeNoRestart(t *testing.T) {
	m, base, bin := startStageIn(t, "")
	answered, stop := dicetest.KeptAlive(strings.TrimPrefix(base, "http://"), 16)
	more := func() { // Waits until the clients had 100 more answers.
		min := answered() + 100
		require.Eventually(t, func() bool { return answered() >= min }, 30*time.Second,
			10*time.Millisecond, "100 more answers")
	}
	pids := map[int]bool{}
	for i := range 7 {
		more()
		pids[m.MainPID(t, "dice.service")] = true
		if i == 6 {
			upgrade(t, filepath.Join(bin, "07-fd-store"))
		}
		m.MustSystemctl(t, "restart", "dice.service")
	}
	more()
	pids[m.MainPID(t, "dice.service")] = true
	kept := stop()
	t.Logf("6 restarts and an upgrade, %d processes: %d requests answered, %d failed, "+
		"%d reconnects, longest wait %s; %v", len(pids), kept.Answered, kept.Failed,
		kept.Reconnects, kept.LongestWait.Round(time.Millisecond), kept.Errors)
	assert.Len(t, pids, 8, "each restart started a new process")
	assert.Zero(t, kept.Failed, "failed requests")
	assert.Zero(t, kept.Reconnects, "reconnects")
	assert.Equal(t, "active", m.Show(t, "dice.service", "ActiveState"))
}

// upgrade puts a new binary in place of path, as a package manager does: a new file
// renamed over the old one. The running process keeps the old one.
func upgrade(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path+".new", data, 0o755))
	require.NoError(t, os.Rename(path+".new", path))
}
