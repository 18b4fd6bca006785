// Package stagetest runs a stage's main as its own process, without a service
// manager: directly, or the way systemd starts a socket-activated service (the
// sockets as file descriptors 3, 4, ..., LISTEN_FDS set to their number and
// LISTEN_PID to the program's own pid). Tests use it to pass a stage the wrong
// kind of socket, which a real socket unit cannot be talked into, and to check
// what a process does with signals. The e2e tests under a real systemd are in
// package systemdtest.
package stagetest

import (
	"bufio"
	"bytes"
	"encoding/json"
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

	"example.com/socket-dice/dice"
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

// NewConn is a client that opens a new connection for every request and closes it
// after the answer, as curl does. Its timeout is generous: a test that floods a
// service waits for answers rather than failing on a slow one.
var NewConn = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// Roll is one GET /roll through client, with its status, Dice-Pid and answer.
func Roll(t testing.TB, client *http.Client, base string) (status, pid int, a dice.Answer) {
	t.Helper()
	resp, err := client.Get(base + "/roll")
	require.NoError(t, err)
	defer resp.Body.Close()
	pid, err = strconv.Atoi(resp.Header.Get("Dice-Pid"))
	require.NoError(t, err, "Dice-Pid header")
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&a))
	}
	return resp.StatusCode, pid, a
}

// TryRoll is one GET /roll that must be answered 200 with a result from 1 to 6 and a
// Dice-Pid, which it returns. Unlike Roll it does not fail the test, so a spawned
// goroutine may call it.
func TryRoll(client *http.Client, base string) (pid int, err error) {
	resp, err := client.Get(base + "/roll")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var a dice.Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return 0, fmt.Errorf("status %d, body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || a.Result < 1 || a.Result > 6 {
		return 0, fmt.Errorf("status %d, result %d", resp.StatusCode, a.Result)
	}
	return strconv.Atoi(resp.Header.Get("Dice-Pid"))
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

// BadRequests is every kind of bad request the service must refuse with a 4xx JSON
// error that says what is allowed. SendBadRequests sends them.
var BadRequests = []struct {
	Name, Method, Target string
	Status               int
	Mentions             string // a piece of the error message
}{
	{"sides not a number", "GET", "/roll?sides=abc", 400,
		"sides must be a whole number from 2 to 1000"},
	{"count not a number", "GET", "/roll?count=three", 400,
		"count must be a whole number from 1 to 100"},
	{"sides zero", "GET", "/roll?sides=0", 400, "from 2 to 1000"},
	{"sides one", "GET", "/roll?sides=1", 400, "from 2 to 1000"},
	{"count zero", "GET", "/roll?count=0", 400, "from 1 to 100"},
	{"sides negative", "GET", "/roll?sides=-6", 400, "from 2 to 1000"},
	{"count negative", "GET", "/roll?count=-1", 400, "from 1 to 100"},
	{"sides too large", "GET", "/roll?sides=1001", 400, "from 2 to 1000"},
	{"count too large", "GET", "/roll?count=101", 400, "from 1 to 100"},
	{"sides overflowing int64", "GET", "/roll?sides=99999999999999999999999", 400, "from 2 to 1000"},
	{"count overflowing int32", "GET", "/roll?count=4294967297", 400, "from 1 to 100"},
	{"sides float", "GET", "/roll?sides=6.0", 400, "whole number"},
	{"sides exponent", "GET", "/roll?sides=1e2", 400, "whole number"},
	{"sides hex", "GET", "/roll?sides=0x10", 400, "whole number"},
	{"sides with plus sign", "GET", "/roll?sides=%2B6", 400, "whole number"},
	{"sides with space", "GET", "/roll?sides=%206", 400, "whole number"},
	{"sides empty", "GET", "/roll?sides=", 400, "from 2 to 1000"},
	{"count empty", "GET", "/roll?count", 400, "from 1 to 100"},
	{"sides repeated", "GET", "/roll?sides=6&sides=8", 400, "sides given 2 times"},
	{"count repeated", "GET", "/roll?count=1&count=1", 400, "count given 2 times"},
	{"unknown parameter", "GET", "/roll?side=6", 400,
		"allowed are sides (2 to 1000) and count (1 to 100)"},
	{"malformed escape", "GET", "/roll?sides=%zz", 400, "malformed query"},
	{"semicolon separator", "GET", "/roll?sides=6;count=2", 400, "malformed query"},
	{"non-ascii digits", "GET", "/roll?count=%D9%A3", 400, "whole number"},
	{"huge value", "GET", "/roll?sides=" + strings.Repeat("9", 4000), 400, "from 2 to 1000"},
	{"unknown path", "GET", "/rolls", 404, "try GET /roll"},
	{"root path", "GET", "/", 404, "try GET /roll"},
	{"POST", "POST", "/roll", 405, "use GET"},
	{"DELETE", "DELETE", "/roll", 405, "use GET"},
	{"PUT with a valid query", "PUT", "/roll?sides=6", 405, "use GET"},
}

// SendBadRequests sends every one of BadRequests to the service at base
// ("http://127.0.0.1:8080") and checks each answer: the expected 4xx status, a
// JSON error that mentions what is allowed, Dice-Pid, and Allow on a 405.
func SendBadRequests(t *testing.T, base string) {
	t.Helper()
	for _, tt := range BadRequests {
		t.Run(tt.Name, func(t *testing.T) {
			req, err := http.NewRequest(tt.Method, base+tt.Target, nil)
			require.NoError(t, err)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()

			assert.Equal(t, tt.Status, resp.StatusCode)
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			assert.NotEmpty(t, resp.Header.Get("Dice-Pid"))
			var e dice.Error
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
			assert.Contains(t, e.Error, tt.Mentions)
			if tt.Status == http.StatusMethodNotAllowed {
				assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
			}
		})
	}
}

// KeepAliveRolls sends n requests one after another over the one connection c,
// GET /roll?count=1, 2, ..., n, checks that each is answered with that many rolls,
// and returns the Dice-Pid of every answer.
func KeepAliveRolls(t testing.TB, c net.Conn, n int) []string {
	t.Helper()
	r := bufio.NewReader(c)
	pids := make([]string, 0, n)
	for i := range n {
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		_, err := fmt.Fprintf(c, "GET /roll?count=%d HTTP/1.1\r\nHost: dice\r\n\r\n", i+1)
		require.NoError(t, err)
		resp, err := http.ReadResponse(r, nil)
		require.NoError(t, err, "request %d on the kept-alive connection", i)
		var a dice.Answer
		err = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		require.NoError(t, err, "request %d", i)
		assert.Len(t, a.Rolls, i+1)
		pids = append(pids, resp.Header.Get("Dice-Pid"))
	}
	return pids
}
