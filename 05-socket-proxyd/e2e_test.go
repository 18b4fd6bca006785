//go:build e2e

// Package socketproxyd holds no program: stage 05 runs stage 01's program, unchanged,
// behind systemd-socket-proxyd (units/05-socket-proxyd). These tests run those units
// under a real systemd user manager of their own (package systemdtest), on free ports
// instead of 8080 and 8081, with a shorter --exit-idle-time where they say so.
package socketproxyd

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

const (
	stage   = "05-socket-proxyd"
	proxy   = "dice-proxy.service"
	backend = "dice-backend.service"
	proxyd  = "/usr/lib/systemd/systemd-socket-proxyd"
)

// service is the stage's units as one test runs them.
type service struct {
	m    *systemdtest.Manager
	base string // http://127.0.0.1:<the socket's port>
	bin  string // the directory of 01-always-on
	port int    // the backend's port
}

// The backends: stage 01's program, and the post's dice.py, as `make run-stage 5
// BACKEND=flask` runs it.
const goApp, flaskApp = "", "flask"

// startStage installs the stage's units under a private systemd user manager: the
// socket on a free port, the backend app on another, the proxy with
// --exit-idle-time=idle. It starts dice.socket only and checks that nothing else runs.
func startStage(t *testing.T, app, idle string) *service {
	t.Helper()
	if app == flaskApp {
		needFlask(t)
	}
	s := &service{m: systemdtest.New(t), bin: systemdtest.BuildStage(t, "01-always-on")}
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	s.base = "http://" + addr
	s.port = systemdtest.FreePort(t)
	require.NoError(t, s.m.InstallBackend(stage, app, s.bin, addr))
	require.NoError(t, s.m.DropIn(proxy, "test", fmt.Sprintf(
		"[Service]\nEnvironment=PORT=%d IDLE=%s\n", s.port, idle)))
	require.NoError(t, s.m.DropIn(backend, "test", fmt.Sprintf("[Service]\nEnvironment=PORT=%d\n",
		s.port)))
	s.m.MustSystemctl(t, "start", "dice.socket")
	s.m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	require.Equal(t, "inactive inactive", s.states(t), "nothing runs before the first request")
	require.Equal(t, 0, s.m.MainPID(t, proxy))
	require.Equal(t, 0, s.m.MainPID(t, backend))
	return s
}

func needFlask(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no tests under a real systemd")
	}
	if exec.Command("/usr/bin/python3", "-c", "import flask").Run() != nil {
		systemdtest.SkipOrFail(t, "the Flask backend needs python3-flask: apt-get install python3-flask")
	}
}

// states is the ActiveState of the proxy and the backend, from one systemctl call.
func (s *service) states(t *testing.T) string {
	t.Helper()
	states, err := s.activeStates()
	require.NoError(t, err)
	return states
}

// activeStates is states for a test's condition, which may not fail the test.
func (s *service) activeStates() (string, error) {
	out, err := s.m.Systemctl("show", "-p", "ActiveState", "--value", proxy, backend)
	return strings.Join(strings.Fields(out), " "), err
}

// waitIdle waits until the proxy has exited idle and systemd has stopped the backend.
func (s *service) waitIdle(t *testing.T) {
	t.Helper()
	// First the backend's process, without asking systemd over and over; it exits
	// after the proxy's, when systemd stops it.
	if pid := s.m.MainPID(t, backend); pid > 0 {
		require.Eventually(t, func() bool { return systemdtest.ProcessState(pid) == 0 },
			30*time.Second, 5*time.Millisecond, "the backend (pid %d) exits", pid)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		states, err := s.activeStates()
		require.NoError(c, err)
		assert.Equal(c, "inactive inactive", states, "proxy and backend")
	}, 30*time.Second, 10*time.Millisecond)
}

// roll is one GET /roll on a new connection, answered 200 with a result from 1 to 6;
// it returns Dice-Pid, empty from the Flask backend. It does not fail the test, so a
// spawned goroutine may call it.
func roll(base string) (pid string, err error) {
	resp, err := dicetest.NewConn.Get(base + "/roll")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var a struct{ Result int }
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return "", fmt.Errorf("status %d, body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || a.Result < 1 || a.Result > 6 {
		return "", fmt.Errorf("status %d, result %d", resp.StatusCode, a.Result)
	}
	return resp.Header.Get("Dice-Pid"), nil
}

// TestZeroProcessesWhenIdle proves the stage's promise, for both backends: nothing
// runs before the first request; it starts the backend, then the proxy, and is
// answered by the backend; after the idle time both exit (status 0) while dice.socket
// goes on listening; the next request starts both again.
func TestZeroProcessesWhenIdle(t *testing.T) {
	t.Parallel()
	systemdtest.Subtests(t, map[string]func(*testing.T){
		"go":    func(t *testing.T) { zeroProcessesWhenIdle(t, goApp) },
		"flask": func(t *testing.T) { zeroProcessesWhenIdle(t, flaskApp) },
	})
}

// zeroProcessesWhenIdle is TestZeroProcessesWhenIdle with the backend app.
func zeroProcessesWhenIdle(t *testing.T, app string) {
	s := startStage(t, app, "300ms")
	var pids []int
	for n := range 2 {
		answeredBy, err := roll(s.base)
		require.NoError(t, err, "request %d", n)
		// ExecMainPID: both may have exited idle already, on a loaded machine.
		pid, err := strconv.Atoi(s.m.Show(t, backend, "ExecMainPID"))
		require.NoError(t, err)
		require.Positive(t, pid)
		if app == goApp {
			assert.Equal(t, strconv.Itoa(pid), answeredBy, "Dice-Pid is the backend's process")
		}
		assert.NotEqual(t, "0", s.m.Show(t, proxy, "ExecMainPID"), "the proxy was started")
		// The proxy started after the backend's start (After=).
		assert.GreaterOrEqual(t, monotonic(t, s.m, proxy, "ExecMainStartTimestampMonotonic"),
			monotonic(t, s.m, backend, "ActiveEnterTimestampMonotonic"))
		pids = append(pids, pid)

		s.waitIdle(t)
		for _, unit := range []string{proxy, backend} {
			assert.Equal(t, "success", s.m.Show(t, unit, "Result"), unit)
			assert.Equal(t, "0", s.m.Show(t, unit, "MainPID"), unit)
		}
		assert.Equal(t, "0", s.m.Show(t, proxy, "ExecMainStatus"), "the proxy exited 0")
		assert.NoDirExists(t, fmt.Sprintf("/proc/%d", pid), "the backend is gone")
		assert.Equal(t, "listening", s.m.Show(t, "dice.socket", "SubState"))
	}
	assert.NotEqual(t, pids[0], pids[1], "the second request started a new backend")
}

// monotonic is a *TimestampMonotonic property of unit, in microseconds.
func monotonic(t *testing.T, m *systemdtest.Manager, unit, prop string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(m.Show(t, unit, prop), 10, 64)
	require.NoError(t, err, "%s of %s", prop, unit)
	return v
}

// TestFirstRequestAfterIdle is the readiness check at work, over and over: each round
// is a request that finds nothing running (it starts the backend, then the proxy), then
// a wait until both have stopped again. Not one may fail: 200 rounds with stage 01's
// program (a process starts in milliseconds), 30 with Flask (a few hundred). The
// rounds are shared among managers that run at once: a round mostly waits for the
// proxy's idle timer, which fires up to 250 ms late (sd-event's default accuracy,
// which systemd-socket-proxyd does not change), however short --exit-idle-time is.
func TestFirstRequestAfterIdle(t *testing.T) {
	t.Parallel()
	tests := map[string]func(*testing.T){}
	for i := range 4 {
		tests[fmt.Sprintf("go %d", i+1)] = func(t *testing.T) { firstRequests(t, goApp, 50) }
	}
	for i := range 2 {
		tests[fmt.Sprintf("flask %d", i+1)] = func(t *testing.T) { firstRequests(t, flaskApp, 15) }
	}
	systemdtest.Subtests(t, tests)
}

// firstRequests runs rounds rounds of TestFirstRequestAfterIdle with the backend app.
func firstRequests(t *testing.T, app string, rounds int) {
	s := startStage(t, app, "10ms")
	var failed []error
	var lastStart int64
	start := time.Now()
	for round := range rounds {
		pid, err := roll(s.base)
		if err != nil {
			failed = append(failed, fmt.Errorf("round %d: %w", round, err))
		}
		s.waitIdle(t)
		// Each round, systemd started a new backend, the one that answered.
		props := map[string]string{} // From one systemctl call: the round takes fewer.
		for _, line := range strings.Fields(s.m.MustSystemctl(t, "show", "-p", "ExecMainPID",
			"-p", "ExecMainStartTimestampMonotonic", backend)) {
			name, value, _ := strings.Cut(line, "=")
			props[name] = value
		}
		started, err := strconv.ParseInt(props["ExecMainStartTimestampMonotonic"], 10, 64)
		require.NoError(t, err)
		require.Greater(t, started, lastStart, "round %d started a backend", round)
		lastStart = started
		if app == goApp && pid != "" {
			assert.Equal(t, props["ExecMainPID"], pid, "round %d", round)
		}
	}
	t.Logf("%d rounds (a cold start each) in %s: %d failed", rounds,
		time.Since(start).Round(time.Millisecond), len(failed))
	assert.Empty(t, failed, "failed requests")
	assert.Equal(t, "success", s.m.Show(t, proxy, "Result"))
	assert.Equal(t, "success", s.m.Show(t, backend, "Result"))
}

// gatedBackend makes the backend a slow starter whose listening the test controls:
// its ExecStart= waits until the file gate exists, then execs stage 01's program (so
// MainPID stays the same process).
func gatedBackend(t *testing.T, s *service, gate string) {
	t.Helper()
	require.NoError(t, s.m.DropIn(backend, "test-gate", fmt.Sprintf("[Service]\nExecStart=\n"+
		"ExecStart=/bin/sh -c 'while [ ! -e %s ]; do sleep 0.02; done; exec \"$$0\" \"$$@\"' "+
		"%s/01-always-on -addr 127.0.0.1:${PORT}\n", gate, s.bin)))
}

// TestReadinessWaitsForTheApp shows the problem (systemd issue #2105) and its
// solution, with a backend that only listens when the test lets it: without the wait
// in the proxy's ExecStart= the proxy finds nothing listening and closes the request
// unanswered; with it the proxy's process waits (still bash, not yet the proxy), and
// the request is answered once the app listens, however long that takes.
func TestReadinessWaitsForTheApp(t *testing.T) {
	t.Parallel()
	systemdtest.Subtests(t, map[string]func(*testing.T){
		"with the check": withCheck, "without the check": withoutCheck})
}

// withCheck: the request waits until the app listens.
func withCheck(t *testing.T) {
	s := startStage(t, goApp, "30s")
	gate := filepath.Join(t.TempDir(), "listen")
	gatedBackend(t, s, gate)
	answered := make(chan error, 1)
	var answeredBy string
	go func() {
		var err error
		answeredBy, err = roll(s.base)
		answered <- err
	}()
	s.m.WaitProp(t, proxy, "ActiveState", "active", 10*time.Second)
	// The app is not listening; the proxy's process still waits, the request too.
	pid := s.m.MainPID(t, proxy)
	for range 10 {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		require.NoError(t, err)
		assert.Equal(t, "bash\n", string(comm), "not yet systemd-socket-proxyd")
	}
	select {
	case err := <-answered:
		t.Fatalf("answered before the app listens: %v", err)
	default:
	}
	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	require.NoError(t, <-answered, "the waiting request is answered")
	assert.Equal(t, strconv.Itoa(s.m.MainPID(t, backend)), answeredBy)
	assert.Equal(t, pid, s.m.MainPID(t, proxy), "bash became the proxy: the same process")
}

// withoutCheck: the proxy finds nothing listening.
func withoutCheck(t *testing.T) {
	s := startStage(t, goApp, "30s")
	gate := filepath.Join(t.TempDir(), "listen")
	gatedBackend(t, s, gate)
	require.NoError(t, s.m.DropIn(proxy, "test-no-wait", "[Service]\nExecStart=\nExecStart="+
		proxyd+" --exit-idle-time=${IDLE} 127.0.0.1:${PORT}\n"))
	_, err := roll(s.base)
	require.Error(t, err, "the proxy finds nothing listening and gives up")
	t.Logf("the first request, with the app not yet listening: %v", err)
	assert.Equal(t, "active", s.m.Show(t, proxy, "ActiveState"), "the proxy runs")
	assert.Equal(t, "active", s.m.Show(t, backend, "ActiveState"), "systemd thinks it is ready")
	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	// Once the app listens, the same proxy gets through: it only needed to wait.
	require.Eventually(t, func() bool { _, err := roll(s.base); return err == nil },
		10*time.Second, 20*time.Millisecond)
}

// TestBrokenAppFailsFast: a backend that exits at once (a busy port, a crash) fails
// (Result=exit-code) and stops the proxy's wait with it (BindsTo=), rather than after
// the wait's 15 s; the socket then gives up on it (trigger-limit-hit) and the waiting
// client's connection is closed. The test's drop-in stretches the socket's trigger
// interval, so that the limit is hit however slow the machine.
func TestBrokenAppFailsFast(t *testing.T) {
	t.Parallel()
	s := startStage(t, goApp, "30s")
	require.NoError(t, s.m.DropIn(backend, "test-broken", "[Service]\nExecStart=\nExecStart=/bin/false\n"))
	require.NoError(t, s.m.DropIn("dice.socket", "test-limit", "[Socket]\nTriggerLimitIntervalSec=1h\n"))
	_, err := roll(s.base)
	assert.Error(t, err)
	s.m.WaitProp(t, "dice.socket", "ActiveState", "failed", 10*time.Second)
	assert.Equal(t, "trigger-limit-hit", s.m.Show(t, "dice.socket", "Result"))
	assert.Equal(t, "failed", s.m.Show(t, backend, "ActiveState"))
	assert.Equal(t, "exit-code", s.m.Show(t, backend, "Result"))
	assert.Equal(t, "inactive", s.m.Show(t, proxy, "ActiveState"), "stopped with the backend")
}

// TestBurstsAcrossIdleExitLoseNothing: 16 clients connect at once, around the moment
// the proxy exits idle. Each round starts the clock with one request whose connection
// the server closes (we see when), then aims the burst at the idle exit. A burst that
// arrives before the exit is answered by the running proxy (its idle timer stops);
// one that arrives after it waits in dice.socket while systemd stops the backend,
// starts it again and then a new proxy, or, if the backend was not stopped yet, starts
// a new proxy in front of the same backend. Not one request may fail. The aim follows
// the exit (the proxy's idle timer fires up to 250 ms late: sd-event's default
// accuracy): later after an early burst, earlier after a late one, so that bursts
// keep landing on both sides. At least 50 rounds, and on (up to 400) until 10 bursts
// have arrived after an exit, 3 of them while the old backend still ran (answered by
// it through a new proxy, or sent before systemd had finished stopping it).
func TestBurstsAcrossIdleExitLoseNothing(t *testing.T) {
	t.Parallel()
	s := startStage(t, goApp, "100ms")
	const clients = 16
	var failed []error
	early, late, sameApp, whileStopping, tight := 0, 0, 0, 0, 0
	closest := time.Hour
	aim := 100 * time.Millisecond
	start := time.Now()
	round := 0
	for ; (round < 50 || late < 10 || tight < 3) && round < 400; round++ {
		pid, closed, err := dicetest.RollAndWaitForClose(s.base)
		if err != nil {
			failed = append(failed, fmt.Errorf("round %d, first request: %w", round, err))
			s.waitIdle(t)
			continue
		}
		proxyBefore := s.m.Show(t, proxy, "ExecMainPID")
		fired := closed.Add(aim)
		pids, errs := dicetest.Burst(clients, fired, func() (string, error) { return roll(s.base) })
		for i := range clients {
			if errs[i] != nil {
				failed = append(failed, fmt.Errorf("round %d, client %d: %w", round, i, errs[i]))
			}
		}
		if s.m.Show(t, proxy, "ExecMainPID") == proxyBefore {
			early++
			aim += 5 * time.Millisecond
			continue
		}
		// A new proxy: the burst came after the old one had exited.
		late++
		aim -= 5 * time.Millisecond
		// The units' last InactiveEnterTimestamp: when the old proxy (the old backend)
		// had exited; the new ones have not yet.
		if gap := fired.Sub(s.m.Timestamp(t, proxy, "InactiveEnterTimestamp")); gap.Abs() < closest.Abs() {
			closest = gap
		}
		if pids[0] == strconv.Itoa(pid) {
			sameApp++ // The backend was still active: the new proxy kept it.
		} else if fired.Before(s.m.Timestamp(t, backend, "InactiveEnterTimestamp")) {
			whileStopping++ // Sent before the old backend had exited.
		}
		tight = sameApp + whileStopping
		s.waitIdle(t)
	}
	t.Logf("%d rounds of 1+%d requests in %s: %d failed; bursts before the proxy's exit: %d, "+
		"after it: %d (%d sent while systemd was stopping the old backend, %d answered by "+
		"the old backend through a new proxy; the closest sent %s after systemd saw the old "+
		"proxy exit, negative: while it was exiting)", round, clients,
		time.Since(start).Round(time.Millisecond), len(failed), early, late, whileStopping,
		sameApp, closest.Round(time.Microsecond))
	assert.Empty(t, failed, "failed requests")
	assert.GreaterOrEqual(t, late, 10, "bursts after an idle exit: the test missed the window")
	assert.Positive(t, tight, "no burst came while the old backend still ran: missed the window")
	s.waitIdle(t) // The last burst may have started a proxy that is still running.
	assert.Equal(t, "listening", s.m.Show(t, "dice.socket", "SubState"))
}

// TestBadRequestsThroughTheProxy sends every bad request through the proxy to stage
// 01's program: each gets the same 4xx JSON answer as from stage 01 alone, and the
// same backend process answers before and after.
func TestBadRequestsThroughTheProxy(t *testing.T) {
	t.Parallel()
	s := startStage(t, goApp, "30s")
	defer http.DefaultClient.CloseIdleConnections()
	pid, err := roll(s.base)
	require.NoError(t, err)
	dicetest.SendBadRequests(t, s.base)
	after, err := roll(s.base)
	require.NoError(t, err)
	assert.Equal(t, pid, after, "bad requests did not end the backend")
	assert.Equal(t, pid, strconv.Itoa(s.m.MainPID(t, backend)))
}

// TestTimerStopsTheServiceBusyOrNot is the post's third way to stop an idle service,
// a timer, here RuntimeMaxSec= on stage 02's socket-activated service: systemd stops
// the service 1 s after its start whether or not a client is using it. The client's
// keep-alive connection is cut between two requests, the unit ends "failed"
// (Result=timeout), and the socket starts a new process on the next connection.
func TestTimerStopsTheServiceBusyOrNot(t *testing.T) {
	t.Parallel()
	m := systemdtest.New(t)
	bin := systemdtest.BuildStage(t, "02-socket-activated")
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	require.NoError(t, m.InstallStage("02-socket-activated", bin, addr))
	require.NoError(t, m.DropIn("dice.service", "test-timer", "[Service]\nRuntimeMaxSec=1s\n"))
	m.MustSystemctl(t, "start", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)

	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	pids := map[string]bool{}
	var cut error
	// A request every 100 ms on one connection: the service is never idle. The
	// bound is a count (10 s), not a time.
	for range 100 {
		if _, cut = fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\n\r\n"); cut != nil {
			break
		}
		resp, err := http.ReadResponse(r, nil)
		if cut = err; err != nil {
			break
		}
		resp.Body.Close()
		pids[resp.Header.Get("Dice-Pid")] = true
		time.Sleep(100 * time.Millisecond)
	}
	require.Error(t, cut, "the busy connection was cut")
	t.Logf("the busy client's connection ended: %v", cut)
	m.WaitProp(t, "dice.service", "ActiveState", "failed", 10*time.Second)
	assert.Equal(t, "timeout", m.Show(t, "dice.service", "Result"))
	assert.Len(t, pids, 1, "one process answered until the cut")
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	pid, err := dicetest.TryRoll(dicetest.NewConn, "http://"+addr)
	require.NoError(t, err, "the next connection starts the service again")
	assert.NotContains(t, pids, strconv.Itoa(pid), "a new process")
}
