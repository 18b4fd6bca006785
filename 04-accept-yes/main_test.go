package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"example.com/socket-dice/dice"
	"example.com/socket-dice/internal/stagetest"
	"example.com/socket-dice/internal/systemdtest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

// TestWrongActivation: without systemd, or handed a listening socket (a socket
// unit with Accept=no), the stage exits 1 and names the fix.
func TestWrongActivation(t *testing.T) {
	tests := []struct {
		name     string
		cmd      *exec.Cmd
		mentions []string
	}{
		{"no systemd at all", stagetest.Self(), []string{"LISTEN_FDS unset",
			"make run-stage 4", "systemd-socket-activate --accept -l 127.0.0.1:8080"}},
		{"a listening socket (Accept=no)", stagetest.Activated([]*os.File{
			stagetest.File(t, stagetest.TCPListener(t))}, nil),
			[]string{"a listening socket, not one connection", "Accept=yes"}},
		{"a datagram socket", stagetest.Activated([]*os.File{
			stagetest.File(t, stagetest.UDPConn(t))}, nil),
			[]string{"not a stream connection"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := stagetest.Exit(t, tt.cmd)
			assert.Equal(t, 1, code, out)
			for _, m := range tt.mentions {
				assert.Contains(t, out, m)
			}
		})
	}
}

// TestServesOneConnection hands the stage one accepted connection, as systemd does
// with Accept=yes: every keep-alive request on it is answered by the same process,
// which exits 0 when the client closes the connection.
func TestServesOneConnection(t *testing.T) {
	server, client := stagetest.TCPConn(t)
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, server)},
		[]string{"LISTEN_FDNAMES=connection"})
	exited := stagetest.Start(t, cmd)
	require.NoError(t, server.Close(), "the stage has its own copy")

	for _, pid := range stagetest.KeepAliveRolls(t, client, 10) {
		assert.Equal(t, strconv.Itoa(cmd.Process.Pid), pid)
	}
	require.NoError(t, client.Close())
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status 0 once the client hung up")
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5 s after the client closed its connection")
	}
}

// TestSilentClientCannotHoldAProcess: a client that connects and sends nothing is
// cut off after dice.ReadHeaderTimeout, and the process exits.
func TestSilentClientCannotHoldAProcess(t *testing.T) {
	server, client := stagetest.TCPConn(t)
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, server)},
		[]string{"LISTEN_FDNAMES=connection"})
	exited := stagetest.Start(t, cmd)
	select {
	case err := <-exited:
		assert.NoError(t, err)
	case <-time.After(dice.ReadHeaderTimeout + 5*time.Second):
		t.Fatalf("a silent client held the process past ReadHeaderTimeout (%s)",
			dice.ReadHeaderTimeout)
	}
	_ = client.SetReadDeadline(time.Now().Add(time.Second))
	_, err := client.Read(make([]byte, 1))
	assert.Error(t, err, "the server closed the silent connection")
}

// TestSystemdSocketActivateAccept is the no-units quick path from the README:
// systemd-socket-activate --accept starts the stage once per connection.
func TestSystemdSocketActivateAccept(t *testing.T) {
	ssa := systemdtest.Need(t, "systemd-socket-activate")
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	cmd := exec.Command(ssa, "--accept", "-l", addr, "-E", "DICE_RUN_MAIN=1", os.Args[0])
	stagetest.Start(t, cmd)
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "systemd-socket-activate listens")

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	pids := map[int]bool{}
	for range 3 {
		status, pid, _ := stagetest.Roll(t, client, "http://"+addr)
		assert.Equal(t, http.StatusOK, status)
		pids[pid] = true
	}
	assert.Len(t, pids, 3, "one process per connection")
}

// The tests below run the stage under a real systemd user manager of their own, with
// units/04-accept-yes (dice.socket with Accept=yes, dice@.service) on a free port.

// startSocket starts dice.socket under a private systemd user manager, its units
// rewritten by edit if it is not nil, and returns the manager and the address.
func startSocket(t *testing.T, edit func(name, content string) string) (
	*systemdtest.Manager, string) {
	t.Helper()
	m := systemdtest.New(t)
	port := systemdtest.FreePort(t)
	m.InstallUnits(t, systemdtest.Install{
		Stage:  "04-accept-yes",
		Binary: systemdtest.BuildStage(t, "04-accept-yes"),
		Port:   port,
		Edit:   edit,
	})
	m.MustSystemctl(t, "start", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	return m, fmt.Sprintf("127.0.0.1:%d", port)
}

// instances are the dice@ instances the manager knows, whatever their state.
func instances(t *testing.T, m *systemdtest.Manager) []string {
	t.Helper()
	out := m.MustSystemctl(t, "list-units", "dice@*", "--all", "--plain", "--no-legend")
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if fields := strings.Fields(line); len(fields) > 0 {
			names = append(names, fields[0])
		}
	}
	return names
}

// assertAllGone waits up to within for the manager to have no dice@ instance left and
// for the processes pids to have exited, then reports what is still there.
func assertAllGone(t *testing.T, m *systemdtest.Manager, within time.Duration, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := instances(t, m)
		for _, pid := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				left = append(left, fmt.Sprintf("process %d", pid))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			assert.Empty(t, left, "still there %s after the last connection closed", within)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// maxConnections is MaxConnections= of the running dice.socket.
func maxConnections(t *testing.T, m *systemdtest.Manager) int {
	t.Helper()
	n, err := strconv.Atoi(m.Show(t, "dice.socket", "MaxConnections"))
	require.NoError(t, err)
	return n
}

// floodResult counts the requests of a flood.
type floodResult struct {
	ok, failed int
	errs       []string // the first few failures
	elapsed    time.Duration
}

func (r floodResult) String() string {
	n := r.ok + r.failed
	return fmt.Sprintf("%d requests in %s (%.0f connections/s), %d failed",
		n, r.elapsed.Round(time.Millisecond), float64(n)/r.elapsed.Seconds(), r.failed)
}

// flood sends GET /roll from clients goroutines at once, each request on a new
// connection, for d or until stop is closed.
func flood(addr string, clients int, d time.Duration, stop <-chan struct{}) floodResult {
	var (
		mu  sync.Mutex
		res floodResult
		wg  sync.WaitGroup
	)
	count := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			res.ok++
			return
		}
		res.failed++
		if len(res.errs) < 5 {
			res.errs = append(res.errs, err.Error())
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-stop:
					return
				default:
				}
				count(tryRoll(addr))
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// TestUnderSystemdOneProcessPerConnection proves the inetd model under a real
// systemd: every connection gets a process of its own (5 connections, 5 Dice-Pids),
// all the keep-alive requests of one connection get the same process (the
// instance's MainPID), and the process and its dice@ instance are gone within 2 s
// of the connection's end. The bad requests get their 4xx answers over the wire.
func TestUnderSystemdOneProcessPerConnection(t *testing.T) {
	m, addr := startSocket(t, nil)

	pids := map[int]bool{}
	for range 5 {
		status, pid, _ := stagetest.Roll(t, stagetest.NewConn, "http://"+addr)
		assert.Equal(t, http.StatusOK, status)
		pids[pid] = true
	}
	assert.Len(t, pids, 5, "5 connections, 5 processes")
	assertAllGone(t, m, 2*time.Second, slices.Collect(maps.Keys(pids))...)

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	keptAlive := map[string]bool{}
	for _, pid := range stagetest.KeepAliveRolls(t, c, 10) {
		keptAlive[pid] = true
	}
	require.Len(t, keptAlive, 1, "10 requests on one connection, one process")
	pid, err := strconv.Atoi(slices.Collect(maps.Keys(keptAlive))[0])
	require.NoError(t, err)
	assert.NotContains(t, pids, pid)
	running := instances(t, m)
	if assert.Len(t, running, 1, "one connection open, one instance") {
		assert.Regexp(t, `^dice@[0-9]+-127\.0\.0\.1:[0-9]+-127\.0\.0\.1:[0-9]+\.service$`,
			running[0])
		assert.Equal(t, pid, m.MainPID(t, running[0]), "Dice-Pid is the instance's MainPID")
	}
	require.NoError(t, c.Close())
	assertAllGone(t, m, 2*time.Second, pid)

	t.Run("bad requests", func(t *testing.T) { stagetest.SendBadRequests(t, "http://"+addr) })
	http.DefaultClient.CloseIdleConnections()
	assertAllGone(t, m, 2*time.Second)
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
}

// TestUnderSystemdSurvivesAFlood proves that dice.socket's TriggerLimitIntervalSec=0
// and MaxConnections= hold under load. 8 clients, each request on a new connection
// (so a new process), for 10 s: not one request fails, and each is one connection
// systemd accepted. Then twice MaxConnections clients for 3 s: systemd resets the
// connections beyond MaxConnections (each one a failed request, counted in NRefused)
// and every connection it accepted is answered. The socket is still listening
// afterwards, and no instance is left 2 s later.
func TestUnderSystemdSurvivesAFlood(t *testing.T) {
	m, addr := startSocket(t, nil)
	maxConns := maxConnections(t, m)

	steady := flood(addr, 8, 10*time.Second, nil)
	t.Logf("8 clients: %s", steady)
	assert.Zero(t, steady.failed, "failed requests, the first ones: %v", steady.errs)
	assert.Positive(t, steady.ok)
	assert.Equal(t, strconv.Itoa(steady.ok), m.Show(t, "dice.socket", "NAccepted"),
		"one connection per request")
	assert.Equal(t, "0", m.Show(t, "dice.socket", "NRefused"), "connections refused")

	// systemd 252 answers nothing while this lasts: refusing the connections keeps it so
	// busy that it does not run the start jobs of those it accepted. Their clients wait,
	// and get their answers when the flood stops.
	burst := flood(addr, 2*maxConns, 3*time.Second, nil)
	t.Logf("%d clients: %s", 2*maxConns, burst)
	assert.Equal(t, strconv.Itoa(steady.ok+burst.ok), m.Show(t, "dice.socket", "NAccepted"),
		"every connection systemd accepted was answered")
	assert.Equal(t, strconv.Itoa(burst.failed), m.Show(t, "dice.socket", "NRefused"),
		"each failed request is a connection systemd refused; the first: %v", burst.errs)

	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	assertAllGone(t, m, 2*time.Second)
}

// TestUnderSystemdMaxConnections proves that MaxConnections= bounds the processes
// that silent clients can hold: 100 connections that send nothing never have more
// than MaxConnections dice@ instances at once. systemd accepts each connection beyond
// the limit and closes it at once (the client reads EOF), logs "Too many incoming
// connections", counts it in NRefused, and keeps listening. The instances close their
// connections after dice.ReadHeaderTimeout and are gone; then /roll works.
func TestUnderSystemdMaxConnections(t *testing.T) {
	const idle = 100
	m, addr := startSocket(t, nil)
	maxConns := maxConnections(t, m)
	require.Less(t, maxConns, idle)

	type closed struct {
		after time.Duration // from the dial to the end of the connection
		err   error         // what the read that ended it returned
	}
	ends := make(chan closed, idle)
	wait := dice.ReadHeaderTimeout + 20*time.Second
	for range idle {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		dialed := time.Now()
		go func() {
			_ = c.SetReadDeadline(dialed.Add(wait))
			n, err := c.Read(make([]byte, 1))
			if n > 0 {
				err = fmt.Errorf("read %d bytes", n)
			}
			ends <- closed{time.Since(dialed), err}
		}()
	}
	var results []closed
	most := 0
	for len(results) < idle {
		most = max(most, len(instances(t, m)))
		select {
		case r := <-ends:
			results = append(results, r)
		case <-time.After(100 * time.Millisecond):
		}
	}

	var refused, served int
	for _, r := range results {
		assert.ErrorIs(t, r.err, io.EOF, "the connection was closed, after %s", r.after)
		if r.after < dice.ReadHeaderTimeout {
			refused++
		} else {
			served++
		}
	}
	t.Logf("%d connections: at most %d instances at once, %d served, %d closed by systemd",
		idle, most, served, refused)
	assert.LessOrEqual(t, most, maxConns, "dice@ instances at once")
	assert.Equal(t, maxConns, served, "connections served until ReadHeaderTimeout")
	assert.Equal(t, strconv.Itoa(refused), m.Show(t, "dice.socket", "NRefused"),
		"connections closed before ReadHeaderTimeout were refused by systemd")
	assert.Contains(t, m.Log(),
		fmt.Sprintf("dice.socket: Too many incoming connections (%d), dropping connection.",
			maxConns))
	assertAllGone(t, m, 2*time.Second)

	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	status, _, _ := stagetest.Roll(t, stagetest.NewConn, "http://"+addr)
	assert.Equal(t, http.StatusOK, status)
}

// TestUnderSystemdDefaultTriggerLimitFails shows why dice.socket sets
// TriggerLimitIntervalSec=0. Without that line, systemd's default trigger limit for
// Accept=yes, 200 connections per 2 s, applies, and the flood that the socket survives
// in TestUnderSystemdSurvivesAFlood (twice MaxConnections clients) puts it in
// "failed" with result trigger-limit-hit: systemd closes the socket, and every
// request fails until someone restarts it.
//
// 8 clients are not used here: they get one process per connection at 80 to 170
// connections/s on a small machine, around the 100/s the limit allows, so whether
// they trip it depends on the machine. The connections systemd refuses beyond
// MaxConnections count as triggers too, and come fast enough on any machine.
func TestUnderSystemdDefaultTriggerLimitFails(t *testing.T) {
	m, addr := startSocket(t, func(name, content string) string {
		var kept []string
		for _, line := range strings.Split(content, "\n") {
			if !strings.HasPrefix(line, "TriggerLimitIntervalSec=") {
				kept = append(kept, line)
			}
		}
		return strings.Join(kept, "\n")
	})
	require.Equal(t, "2s", m.Show(t, "dice.socket", "TriggerLimitIntervalUSec"))
	require.Equal(t, "200", m.Show(t, "dice.socket", "TriggerLimitBurst"))
	maxConns := maxConnections(t, m)

	// The flood stops as soon as the socket has failed, or after 10 s.
	failedAt := make(chan time.Time, 1)
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			out, err := m.Systemctl("show", "-p", "ActiveState", "--value", "dice.socket")
			if err == nil && strings.TrimSpace(out) == "failed" {
				failedAt <- time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	start := time.Now()
	res := flood(addr, 2*maxConns, 10*time.Second, stop)
	<-stop
	var failed time.Time
	select {
	case failed = <-failedAt:
	default:
		t.Fatalf("the socket did not fail within 10 s; flood: %s", res)
	}
	accepted, err := strconv.Atoi(m.Show(t, "dice.socket", "NAccepted"))
	require.NoError(t, err)
	refused, err := strconv.Atoi(m.Show(t, "dice.socket", "NRefused"))
	require.NoError(t, err)
	t.Logf("%d clients: the socket failed %s into the flood, after %d connections "+
		"(%d served, %d refused); flood: %s", 2*maxConns,
		failed.Sub(start).Round(time.Millisecond), accepted+refused, accepted, refused, res)
	assert.Greater(t, accepted+refused, 200, "systemd allowed TriggerLimitBurst=200 connections")

	assert.Equal(t, "failed", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "failed", m.Show(t, "dice.socket", "SubState"))
	assert.Equal(t, "trigger-limit-hit", m.Show(t, "dice.socket", "Result"))
	log := m.Log()
	assert.Contains(t, log, "dice.socket: Trigger limit hit, refusing further activation.")
	assert.Contains(t, log, "dice.socket: Failed with result 'trigger-limit-hit'.")
	assert.Positive(t, res.failed, "failed requests")
	_, err = net.DialTimeout("tcp", addr, 5*time.Second)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED, "nothing listens any more")

	// Only a restart of the socket brings the service back, and only once the 2 s
	// window in which systemd counts the triggers has passed: systemd keeps the count
	// across a restart, and the first connection of a restart within the window fails
	// the socket again.
	time.Sleep(time.Until(failed.Add(2*time.Second + 500*time.Millisecond)))
	m.MustSystemctl(t, "restart", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	status, _, _ := stagetest.Roll(t, stagetest.NewConn, "http://"+addr)
	assert.Equal(t, http.StatusOK, status)
}

// tryRoll is one GET /roll on a new connection, a new dice@ instance.
func tryRoll(addr string) error {
	_, err := stagetest.TryRoll(stagetest.NewConn, "http://"+addr)
	return err
}
