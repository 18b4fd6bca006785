//go:build e2e

package main

// The tests in this file run units/04-accept-yes (dice.socket with Accept=yes,
// dice@.service) under a real systemd user manager of their own (package
// systemdtest), on a free port instead of 8080.

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

// startSocket starts dice.socket under a private systemd user manager, with dropIn,
// if not empty, as a drop-in of dice.socket, and returns the manager and the address.
func startSocket(t *testing.T, dropIn string, args ...string) (*systemdtest.Manager, string) {
	t.Helper()
	m := systemdtest.New(t)
	bin := systemdtest.BuildStage(t, "04-accept-yes")
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	require.NoError(t, m.InstallStage("04-accept-yes", bin, addr, args...))
	if dropIn != "" {
		require.NoError(t, m.DropIn("dice.socket", "test", dropIn))
	}
	m.MustSystemctl(t, "start", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	return m, addr
}

// instances are the dice@ instances the manager knows, whatever their state.
func instances(t *testing.T, m *systemdtest.Manager) []string {
	t.Helper()
	names, err := listInstances(m)
	require.NoError(t, err)
	return names
}

// listInstances is instances for a test's condition, which may not fail the test.
func listInstances(m *systemdtest.Manager) ([]string, error) {
	out, err := m.Systemctl("list-units", "dice@*", "--all", "--plain", "--no-legend")
	if err != nil {
		return nil, fmt.Errorf("systemctl --user list-units: %w: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if fields := strings.Fields(line); len(fields) > 0 {
			names = append(names, fields[0])
		}
	}
	return names, nil
}

// assertAllGone waits up to within for the manager to have no dice@ instance left and
// for the processes pids to have exited, then reports what is still there.
func assertAllGone(t *testing.T, m *systemdtest.Manager, within time.Duration, pids ...int) {
	t.Helper()
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		left, err := listInstances(m)
		require.NoError(c, err)
		for _, pid := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				left = append(left, fmt.Sprintf("process %d", pid))
			}
		}
		assert.Empty(c, left, "still there %s after the last connection closed", within)
	}, within, 50*time.Millisecond)
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
}

func (r floodResult) String() string {
	return fmt.Sprintf("%d requests, %d failed", r.ok+r.failed, r.failed)
}

// source is the address the i-th client of a flood connects from.
type source func(i int) net.IP

// ownAddress gives each client an address of its own (127.0.1.i), as the clients of a
// real flood have: MaxConnectionsPerSource= does not limit them.
func ownAddress(i int) net.IP { return net.IPv4(127, 0, 1, byte(i+1)) }

// oneAddress is one client with several callers, such as `hey -c 8` or a browser.
func oneAddress(int) net.IP { return net.IPv4(127, 0, 0, 1) }

// flood sends GET /roll from clients goroutines at once, each request on a new
// connection (so a new dice@ instance), n requests each, from the addresses from gives.
func flood(addr string, from source, clients, n int) floodResult {
	var (
		mu  sync.Mutex
		res floodResult
		wg  sync.WaitGroup
	)
	for i := range clients {
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from(i)}}
		client := &http.Client{Timeout: dicetest.NewConn.Timeout, Transport: &http.Transport{
			DisableKeepAlives: true, DialContext: dialer.DialContext}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				_, err := dicetest.TryRoll(client, "http://"+addr)
				mu.Lock()
				if err == nil {
					res.ok++
				} else if res.failed++; len(res.errs) < 5 {
					res.errs = append(res.errs, err.Error())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// TestUnderSystemdOneProcessPerConnection proves the inetd model under a real
// systemd: every connection gets a process of its own (5 connections, 5 Dice-Pids),
// all the keep-alive requests of one connection get the same process (the
// instance's MainPID), and the process and its dice@ instance are gone within 10 s
// of the connection's end. The bad requests get their 4xx answers over the wire.
func TestUnderSystemdOneProcessPerConnection(t *testing.T) {
	t.Parallel()
	m, addr := startSocket(t, "")

	pids := map[int]bool{}
	for range 5 {
		status, pid, _ := dicetest.Roll(t, dicetest.NewConn, "http://"+addr)
		assert.Equal(t, http.StatusOK, status)
		pids[pid] = true
	}
	assert.Len(t, pids, 5, "5 connections, 5 processes")
	assertAllGone(t, m, 10*time.Second, slices.Collect(maps.Keys(pids))...)

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	keptAlive := map[string]bool{}
	for _, pid := range dicetest.KeepAliveRolls(t, c, 10) {
		keptAlive[pid] = true
	}
	require.Len(t, keptAlive, 1, "10 requests on one connection, one process")
	pid, err := strconv.Atoi(slices.Collect(maps.Keys(keptAlive))[0])
	require.NoError(t, err)
	assert.NotContains(t, pids, pid)
	running := instances(t, m)
	if assert.Len(t, running, 1, "one connection open, one instance") {
		// The instance name says which connection it serves; its form changes with
		// systemd's version (258 adds the socket's cookie), so nothing parses it.
		assert.True(t, strings.HasPrefix(running[0], "dice@"), running[0])
		assert.Equal(t, pid, m.MainPID(t, running[0]), "Dice-Pid is the instance's MainPID")
	}
	require.NoError(t, c.Close())
	assertAllGone(t, m, 10*time.Second, pid)

	t.Run("bad requests", func(t *testing.T) { dicetest.SendBadRequests(t, "http://"+addr) })
	http.DefaultClient.CloseIdleConnections()
	assertAllGone(t, m, 10*time.Second)
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
}

// TestUnderSystemdSurvivesAFlood proves that dice.socket's TriggerLimitIntervalSec=0
// and MaxConnections= hold under load: twice MaxConnections clients, each at an
// address of its own, 3 requests each, each on a new connection (so a new process).
// On systemd 255 and newer, PollLimitBurst= throttles how fast systemd takes them,
// which only makes the clients wait. systemd resets the connections beyond
// MaxConnections (each one a failed request, counted in NRefused) and every
// connection it accepted is answered. The socket is still listening afterwards, and no
// instance is left 10 s later. (TestUnderSystemdOneClientManyCallers is the steady
// load that loses nothing.)
func TestUnderSystemdSurvivesAFlood(t *testing.T) {
	t.Parallel()
	m, addr := startSocket(t, "")
	maxConns := maxConnections(t, m)

	// systemd 252 answers nothing while this lasts: refusing the connections keeps it so
	// busy that it does not run the start jobs of those it accepted. Their clients wait,
	// and get their answers when the flood stops.
	burst := flood(addr, ownAddress, 2*maxConns, 3)
	t.Logf("%d clients: %s", 2*maxConns, burst)
	assert.Equal(t, strconv.Itoa(burst.ok), m.Show(t, "dice.socket", "NAccepted"),
		"every connection systemd accepted was answered")
	assert.Equal(t, strconv.Itoa(burst.failed), m.Show(t, "dice.socket", "NRefused"),
		"each failed request is a connection systemd refused; the first: %v", burst.errs)

	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	assertAllGone(t, m, 10*time.Second)
}

// closed is how a silent connection ended.
type closed struct {
	after time.Duration // from the dial to the end of the connection
	err   error         // what the read that ended it returned
}

// silent opens n connections to addr from the loopback address src that send
// nothing, reports how each one ends on ends, which must have room for them, and
// returns them (closed when the test ends, if not before).
func silent(t *testing.T, addr, src string, n int, ends chan<- closed) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	var conns []net.Conn
	for range n {
		c, err := d.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
		dialed := time.Now()
		go func() {
			n, err := c.Read(make([]byte, 1))
			if n > 0 {
				err = fmt.Errorf("read %d bytes", n)
			}
			ends <- closed{time.Since(dialed), err}
		}()
	}
	return conns
}

// TestUnderSystemdMaxConnections proves that MaxConnections= bounds the processes
// that silent clients can hold: 100 connections that send nothing, from 20 client
// addresses, never have more than MaxConnections dice@ instances at once. systemd
// accepts each connection beyond the limit and closes it at once (the client reads
// EOF), counts it in NRefused, and keeps listening. Each of the others holds its
// process (with -header-timeout 10m, until its client closes, however slow the
// machine); once the clients close, the instances are gone and /roll works.
func TestUnderSystemdMaxConnections(t *testing.T) {
	t.Parallel()
	const sources, each, hold = 20, 5, 10 * time.Minute
	m, addr := startSocket(t, "", "-header-timeout", hold.String())
	maxConns := maxConnections(t, m)
	refused := sources*each - maxConns
	require.Positive(t, refused)

	ends := make(chan closed, sources*each)
	var conns []net.Conn
	most := 0
	for i := range sources {
		conns = append(conns, silent(t, addr, fmt.Sprintf("127.0.0.%d", 10+i), each, ends)...)
		most = max(most, len(instances(t, m)))
	}
	for i := range refused {
		select {
		case r := <-ends:
			assert.ErrorIs(t, r.err, io.EOF, "systemd closed connection %d, after %s", i, r.after)
		case <-time.After(60 * time.Second):
			require.Fail(t, "systemd did not close the connections beyond MaxConnections",
				"%d of %d closed", i, refused)
		}
		most = max(most, len(instances(t, m)))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		names, err := listInstances(m)
		require.NoError(c, err)
		assert.Len(c, names, maxConns, "instances, each holding a silent connection")
	}, 30*time.Second, 50*time.Millisecond)
	select {
	case r := <-ends:
		require.Fail(t, "a connection within MaxConnections was closed",
			"after %s: %v", r.after, r.err)
	default:
	}
	t.Logf("%d connections: at most %d instances at once, %d closed by systemd",
		sources*each, most, refused)
	assert.LessOrEqual(t, most, maxConns, "dice@ instances at once")
	assert.Equal(t, strconv.Itoa(refused), m.Show(t, "dice.socket", "NRefused"))

	for _, c := range conns {
		c.Close()
	}
	assertAllGone(t, m, 30*time.Second)
	assert.Equal(t, "listening", m.Show(t, "dice.socket", "SubState"))
	status, _, _ := dicetest.Roll(t, dicetest.NewConn, "http://"+addr)
	assert.Equal(t, http.StatusOK, status)
}

// TestUnderSystemdOnePeerCannotLockOthersOut proves MaxConnectionsPerSource=: a client
// at 127.0.0.2 opens 40 connections and sends nothing. systemd gives it
// MaxConnectionsPerSource processes (24) and closes its other connections at once, so
// the slots left serve everyone else: a client at 127.0.0.1 gets its 3 requests
// answered while the silent ones still hold their processes: with -header-timeout
// 10m they hold them until the test ends, however slow the machine.
func TestUnderSystemdOnePeerCannotLockOthersOut(t *testing.T) {
	t.Parallel()
	const hold = 10 * time.Minute
	m, addr := startSocket(t, "", "-header-timeout", hold.String())
	perSource, err := strconv.Atoi(m.Show(t, "dice.socket", "MaxConnectionsPerSource"))
	require.NoError(t, err)
	require.Less(t, perSource, maxConnections(t, m))
	const attack = 40
	require.Less(t, perSource, attack)

	ends := make(chan closed, attack)
	silent(t, addr, "127.0.0.2", attack, ends)
	for range attack - perSource {
		r := <-ends
		require.ErrorIs(t, r.err, io.EOF, "systemd closes what is beyond the limit")
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		names, err := listInstances(m)
		require.NoError(c, err)
		assert.Len(c, names, perSource, "the silent client's instances")
	}, 10*time.Second, 20*time.Millisecond)

	for i := range 3 {
		start := time.Now()
		status, _, _ := dicetest.Roll(t, dicetest.NewConn, "http://"+addr)
		assert.Equal(t, http.StatusOK, status, "request %d of the other client", i)
		t.Logf("request %d of the other client answered in %s", i,
			time.Since(start).Round(time.Millisecond))
	}
	select {
	case r := <-ends:
		t.Fatalf("a silent connection ended (after %s) before the other client was "+
			"answered: the answers may have waited for its slot", r.after)
	default:
	}
	assert.Equal(t, strconv.Itoa(attack-perSource), m.Show(t, "dice.socket", "NRefused"))
}

// TestUnderSystemdOneClientManyCallers proves that MaxConnectionsPerSource= leaves
// room for a polite client with several callers, such as `hey -c 8` or a browser:
// 8 callers at 127.0.0.1, each request on a connection of its own (Connection: close).
// systemd counts a connection against the limit until its instance has exited, not
// until the client closed it, so a caller that reconnects at once holds two slots or
// more. First the 16 connections of 8 callers that hold two each, open at once: all
// are answered (with the limit at 8, systemd would close 8 of them at once, on any
// machine). Then the callers themselves, 50 requests each: not one is refused.
func TestUnderSystemdOneClientManyCallers(t *testing.T) {
	t.Parallel()
	m, addr := startSocket(t, "")
	const callers, each = 8, 50

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: oneAddress(0)}, Timeout: 5 * time.Second}
	conns := make([]net.Conn, 2*callers)
	for i := range conns {
		c, err := d.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	for i, c := range conns {
		require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
		_, err := fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\nConnection: close\r\n\r\n")
		require.NoError(t, err, "connection %d of %d open at once", i+1, len(conns))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if assert.NoError(t, err, "connection %d of %d open at once", i+1, len(conns)) {
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}
	}

	res := flood(addr, oneAddress, callers, each)
	t.Logf("%d callers at one address: %s", callers, res)
	assert.Zero(t, res.failed, "failed requests, the first ones: %v", res.errs)
	assert.Equal(t, callers*each, res.ok)
	assert.Equal(t, strconv.Itoa(len(conns)+res.ok), m.Show(t, "dice.socket", "NAccepted"),
		"one connection per request")
	assert.Equal(t, "0", m.Show(t, "dice.socket", "NRefused"), "connections refused")
	assertAllGone(t, m, 10*time.Second)
}

// TestUnderSystemdTriggerLimitFails shows why dice.socket sets
// TriggerLimitIntervalSec=0. Without that line, systemd's default trigger limit for
// Accept=yes, 200 connections per 2 s, applies, and a flood of short connections puts
// the socket in "failed" with result trigger-limit-hit: systemd closes the socket, and
// every request fails until someone restarts it. Whether a flood reaches 100
// connections/s depends on the machine; the test's drop-in makes the limit 20 per
// hour instead, so that the 21st connection trips it on any machine.
func TestUnderSystemdTriggerLimitFails(t *testing.T) {
	t.Parallel()
	m, addr := startSocket(t, "[Socket]\nTriggerLimitIntervalSec=1h\nTriggerLimitBurst=20\n")
	require.Equal(t, "1h", m.Show(t, "dice.socket", "TriggerLimitIntervalUSec"))

	for i := range 20 {
		require.NoError(t, tryRoll(addr), "connection %d of the 20 allowed", i+1)
	}
	assert.Error(t, tryRoll(addr), "the 21st connection")
	m.WaitProp(t, "dice.socket", "ActiveState", "failed", 10*time.Second)
	assert.Equal(t, "trigger-limit-hit", m.Show(t, "dice.socket", "Result"))
	_, err := net.DialTimeout("tcp", addr, 5*time.Second)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED, "nothing listens any more")

	// The committed unit (TriggerLimitIntervalSec=0) and a restart bring it back.
	require.NoError(t, m.DropIn("dice.socket", "test", "# Back to the committed unit.\n"))
	require.Equal(t, "0", m.Show(t, "dice.socket", "TriggerLimitIntervalUSec"))
	m.MustSystemctl(t, "restart", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	for i := range 25 {
		require.NoError(t, tryRoll(addr), "connection %d after the restart", i+1)
	}
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
}

// tryRoll is one GET /roll on a new connection, a new dice@ instance.
func tryRoll(addr string) error {
	_, err := dicetest.TryRoll(dicetest.NewConn, "http://"+addr)
	return err
}
