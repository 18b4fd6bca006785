// Package stagetest runs a stage's main as its own process, without a service
// manager: directly, or the way systemd starts a socket-activated service (the
// sockets as file descriptors 3, 4, ..., LISTEN_FDS set to their number and
// LISTEN_PID to the program's own pid). Tests use it to pass a stage the wrong
// kind of socket, which a real socket unit cannot be talked into, and to check
// what a process does with signals; and, for the e2e tests under a real systemd
// (package systemdtest), a request in flight and restarts under load.
package stagetest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

// runMain is set in the environment of a test binary that is to run as the stage.
const runMain = "DICE_RUN_MAIN"

// Main is a stage test's TestMain: it runs the stage's main instead of the tests
// when the test binary was started by Self or Command.
func Main(m *testing.M, main func()) {
	if os.Getenv(runMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Self runs the test binary itself as the stage's main, with args.
func Self(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMain+"=1")
	return cmd
}

// shim sets LISTEN_PID to its own pid, then execs the program in the same process,
// so the pid matches, as when systemd forks and execs the service.
const shim = `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`

// Activated runs the test binary as the stage's main with args, and files passed
// as fds 3, 4, ... as systemd passes sockets. Extra environment (LISTEN_FDNAMES)
// goes in env.
func Activated(files []*os.File, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", append([]string{"-c", shim, os.Args[0]}, args...)...)
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), runMain+"=1", "LISTEN_FDS="+strconv.Itoa(len(files)))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// Exit runs cmd to its end (at most 10 s) and returns its exit code and output.
func Exit(t testing.TB, cmd *exec.Cmd) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	timer := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		require.True(t, ok, "%v: %s", err, out.String())
		return exit.ExitCode(), out.String()
	}
	return 0, out.String()
}

// File returns the socket behind a net.Listener, net.Conn or net.PacketConn as an
// *os.File to pass on; it is closed when the test ends.
func File(t testing.TB, s interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := s.File()
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TCPListener is a fresh listening socket on a free loopback port.
func TCPListener(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// TCPConn is the server side of a fresh loopback connection, as systemd hands it to
// an Accept=yes service, and the client side to talk through.
func TCPConn(t testing.TB) (server, client *net.TCPConn) {
	t.Helper()
	ln := TCPListener(t)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	s, err := ln.AcceptTCP()
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, c.(*net.TCPConn)
}

// UDPConn is a datagram socket, as a ListenDatagram= line would pass.
func UDPConn(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// Start starts cmd and reports its exit (nil for status 0). The test kills it at
// the end if it is still running.
func Start(t testing.TB, cmd *exec.Cmd) <-chan error {
	t.Helper()
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return exited
}

// Accepted tells whether a process has accepted the connection whose client side is
// c. In /proc/net/tcp the server side of a connection that waits in a listening
// socket's backlog has inode 0: no process holds it yet. It is an error when the
// connection is not there at all.
func Accepted(c net.Conn) (bool, error) {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false, err
	}
	local := fmt.Sprintf(":%04X", c.RemoteAddr().(*net.TCPAddr).Port)
	remote := fmt.Sprintf(":%04X", c.LocalAddr().(*net.TCPAddr).Port)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 9 && strings.HasSuffix(f[1], local) && strings.HasSuffix(f[2], remote) {
			return f[9] != "0", nil
		}
	}
	return false, fmt.Errorf("no server side of %s -> %s in /proc/net/tcp", c.LocalAddr(),
		c.RemoteAddr())
}

// InFlight opens a connection to addr and sends a request but for its last line,
// then waits until the server process has accepted the connection: the request is
// in flight. finish sends the last line and reads the answer, for a test that stops
// the server in between.
func InFlight(t testing.TB, addr string) (finish func() (*http.Response, error)) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\n")
	require.NoError(t, err)
	// Before it is accepted, a connection waits in the listening socket's backlog,
	// which a stop does not touch.
	accepted := func() bool { ok, err := Accepted(c); return err == nil && ok }
	require.Eventually(t, accepted, 20*time.Second, 10*time.Millisecond,
		"the server accepts the connection")
	return func() (*http.Response, error) {
		if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
			return nil, err
		}
		if _, err := fmt.Fprint(c, "\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
}

// IdleExit checks a stage that exits when idle (03, 06, 07), started with -idle 50ms
// on the sockets that sockets makes: ln, the one a client connects to, and files, all
// that the stage is passed (LISTEN_FDNAMES in env). It answers n requests for path
// on one connection, each after two idle periods in which the connection stays open
// and silent (the timer counts connections, not requests), each from the stage's own
// pid; once the connection is closed, it exits 0.
//
// The clock runs from the start. The connection is made before, and waits in the
// backlog, but if the stage took it later than the idle time (a loaded machine), it
// rightly stopped first: a request fails, or is answered with Connection: close, and
// the stage's exit line says rolls=0. Such a try tells nothing, and is made again with
// new sockets. A timer that counted requests, not connections, stops after a roll.
func IdleExit(t *testing.T, n int, path string, env []string,
	sockets func() (ln net.Listener, files []*os.File)) {
	t.Helper()
	for try := 1; ; try++ {
		log, ok := idleExit(t, n, path, env, sockets)
		if ok {
			return
		}
		require.Less(t, try, 10, "in 10 tries the stage stopped before it took the "+
			"connection; its last log:\n%s", log)
		t.Log("the idle time ran out before the stage took the connection: trying again")
	}
}

// idleExit is one try of IdleExit: false, with the stage's log, if the stage stopped
// before it took the connection.
func idleExit(t *testing.T, n int, path string, env []string,
	sockets func() (net.Listener, []*os.File)) (string, bool) {
	ln, files := sockets()
	c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	var out bytes.Buffer // the stage's log, read once it has exited
	cmd := Activated(files, env, "-idle", "50ms")
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	done, status := make(chan struct{}), error(nil)
	go func() { status = cmd.Wait(); close(done) }()
	exited := func(within time.Duration) bool {
		select {
		case <-done:
			return true
		case <-time.After(within):
			return false
		}
	}
	// Only the stage holds the sockets now: a connection it did not take is reset when
	// it exits, not left waiting.
	errs := []error{ln.Close()}
	for _, f := range files {
		errs = append(errs, f.Close())
	}
	require.NoError(t, errors.Join(errs...))

	r := bufio.NewReader(c)
	for i := range n {
		if i > 0 {
			time.Sleep(100 * time.Millisecond) // two idle periods
		}
		var resp *http.Response
		_, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: dice\r\n\r\n", path)
		if err == nil {
			resp, err = http.ReadResponse(r, nil)
		}
		// A roll counts in rolls=, a /stats does not: a stop after one tells nothing.
		if (err != nil || i == 0 && resp.Close) && (i == 0 || path == "/roll") &&
			exited(5*time.Second) && strings.Contains(out.String(), "rolls=0") {
			return out.String(), false
		}
		require.NoError(t, err, "request %d on the kept-alive connection", i+1)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, strconv.Itoa(cmd.Process.Pid), resp.Header.Get("Dice-Pid"))
	}
	require.False(t, exited(0), "exited while a kept-alive connection was open")
	require.NoError(t, c.Close())
	require.True(t, exited(5*time.Second), "still running 5 s after the connection closed")
	assert.NoError(t, status, "exit status 0 when idle")
	return "", true
}

// RestartsUnderLoad restarts dice.service of m n times, one after the other, while 4
// clients on kept-alive connections and 4 on new connections call it at base, and
// checks that no request failed and that the socket and the service are active.
// Between two restarts the new process answers at least 20 requests, so that every
// restart happens under load.
func RestartsUnderLoad(t *testing.T, m *systemdtest.Manager, base string, n int) {
	t.Helper()
	answered, stop := dicetest.Load(base, 4, 4)
	defer stop() // Also when the test fails halfway.
	// Waits until the service has answered 20 more requests.
	answer20 := func() {
		t.Helper()
		least := answered() + 20
		require.Eventually(t, func() bool { return answered() >= least }, 30*time.Second,
			10*time.Millisecond, "20 more requests answered")
	}
	pids := map[int]bool{}
	for i := range n {
		answer20()
		pids[m.MainPID(t, "dice.service")] = true
		m.MustSystemctl(t, "restart", "dice.service")
		t.Logf("restart %d: %d requests answered so far", i+1, answered())
	}
	answer20()
	failed := stop()
	t.Logf("%d restarts, %d processes: %d requests answered, %d failed", n, len(pids)+1,
		answered(), len(failed))
	assert.Empty(t, failed, "failed requests")
	assert.Len(t, pids, n, "each restart started a new process")
	assert.Equal(t, "active", m.Show(t, "dice.socket", "ActiveState"))
	assert.Equal(t, "active", m.Show(t, "dice.service", "ActiveState"))
}
