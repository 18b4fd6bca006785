package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

// unixClient is an HTTP client that reaches every URL through the unix socket at
// path, one connection per request, as `curl --unix-socket path` does.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

// get is one GET of url through client: the status, the Dice-Pid and the body. It
// does not fail the test, so a spawned goroutine may call it.
func get(client *http.Client, url string) (status, pid int, body string, err error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	pid, _ = strconv.Atoi(resp.Header.Get("Dice-Pid"))
	return resp.StatusCode, pid, b.String(), err
}

// stats is GET /stats on the admin socket at path, which must answer 200 with JSON.
func stats(t testing.TB, path string) Stats {
	t.Helper()
	status, _, body, err := get(unixClient(path), "http://dice/stats")
	require.NoError(t, err, "GET /stats on %s", path)
	require.Equal(t, http.StatusOK, status, body)
	var s Stats
	require.NoError(t, json.Unmarshal([]byte(body), &s), body)
	return s
}

// unixListener is a fresh listening unix socket in a directory of the test's.
func unixListener(t testing.TB) *net.UnixListener {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.UnixListener)
}

// syncBuffer is the output of a process, read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWithoutSystemdItSaysWhatToDo(t *testing.T) {
	t.Parallel()
	code, out := stagetest.Exit(t, stagetest.Self("-idle", "1s"))
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "LISTEN_FDS unset")
	assert.Contains(t, out, "make run-stage 6")
}

// TestNamesNotOrder passes two public TCP sockets and the admin unix socket, as
// dice.socket and dice-admin.socket do, in each order systemd may choose: the
// service finds each by its name. Rolls answer on every public socket and not on
// the admin one; /stats answers on the admin socket only, counts the rolls, and the
// log names the caller's uid.
func TestNamesNotOrder(t *testing.T) {
	t.Parallel()
	for _, adminFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("admin first: %v", adminFirst), func(t *testing.T) {
			v4, other, admin := stagetest.TCPListener(t), stagetest.TCPListener(t), unixListener(t)
			files := []*os.File{stagetest.File(t, v4), stagetest.File(t, other),
				stagetest.File(t, admin)}
			names := "LISTEN_FDNAMES=public:public:admin"
			if adminFirst {
				files = []*os.File{files[2], files[0], files[1]}
				names = "LISTEN_FDNAMES=admin:public:public"
			}
			cmd := stagetest.Activated(files, []string{names}, "-idle", "1m")
			var out syncBuffer
			cmd.Stderr = &out
			exited := stagetest.Start(t, cmd)

			for _, ln := range []net.Listener{v4, other} {
				base := "http://" + ln.Addr().String()
				status, pid, _ := dicetest.Roll(t, dicetest.NewConn, base)
				assert.Equal(t, http.StatusOK, status, "GET /roll on %s", base)
				assert.Equal(t, cmd.Process.Pid, pid)
				status, _, body, err := get(dicetest.NewConn, base+"/stats")
				require.NoError(t, err)
				assert.Equal(t, http.StatusNotFound, status, "/stats on the public socket")
				assert.JSONEq(t, `{"error":"no such path \"/stats\": try GET /roll"}`, body)
			}
			path := admin.Addr().String()
			s := stats(t, path)
			assert.Equal(t, int64(2), s.Rolls, "two rolls served")
			assert.Equal(t, cmd.Process.Pid, s.Pid)
			assert.Positive(t, s.UptimeSeconds)
			// The server may count a closed connection a moment after its client saw
			// the answer; then the one connection open is the one asking.
			assert.Eventually(t, func() bool {
				_, _, body, err := get(unixClient(path), "http://dice/stats")
				var s Stats
				return err == nil && json.Unmarshal([]byte(body), &s) == nil &&
					s.ConnectionsOpen == 1
			}, 5*time.Second, 10*time.Millisecond, "connections_open")
			status, _, _, err := get(unixClient(path), "http://dice/roll")
			require.NoError(t, err)
			assert.Equal(t, http.StatusNotFound, status, "no rolls on the admin socket")

			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			select {
			case err := <-exited:
				assert.NoError(t, err, "exit status 0 after SIGTERM")
			case <-time.After(10 * time.Second):
				t.Fatal("still running 10 s after SIGTERM")
			}
			assert.Contains(t, out.String(), fmt.Sprintf(
				`msg="admin request" method=GET uri=/stats status=200 peer_uid=%d`, os.Getuid()))
			assert.FileExists(t, path, "the service never removes the socket file")
		})
	}
}

// TestWrongNamesSayWhichLineToFix passes sockets under the wrong names, or of the
// wrong kind, as a mistyped unit would: each time the service exits 1 and names
// the unit line to fix.
func TestWrongNamesSayWhichLineToFix(t *testing.T) {
	t.Parallel()
	tcp := func(t *testing.T) *os.File { return stagetest.File(t, stagetest.TCPListener(t)) }
	unix := func(t *testing.T) *os.File { return stagetest.File(t, unixListener(t)) }
	udp := func(t *testing.T) *os.File { return stagetest.File(t, stagetest.UDPConn(t)) }
	conn := func(t *testing.T) *os.File {
		s, _ := stagetest.TCPConn(t)
		return stagetest.File(t, s)
	}
	for _, tc := range []struct {
		name  string
		fds   []func(*testing.T) *os.File
		names string
		want  []string
	}{
		{"no admin socket", []func(*testing.T) *os.File{tcp, tcp}, "public:public",
			[]string{"no socket named admin (fds: public x2)", "start dice-admin.socket",
				"FileDescriptorName=admin in dice-admin.socket", "Sockets= of dice.service"}},
		{"no public socket", []func(*testing.T) *os.File{unix}, "admin",
			[]string{"no socket named public (fds: admin x1)", "start dice.socket",
				"FileDescriptorName=public in dice.socket"}},
		{"no FileDescriptorName= in dice.socket", []func(*testing.T) *os.File{tcp, unix},
			"dice.socket:admin", []string{`named dice.socket, which this service does not ` +
				`take: add FileDescriptorName= to dice.socket`}},
		{"an unknown name", []func(*testing.T) *os.File{tcp, unix}, "web:admin",
			[]string{`named web, which this service does not take: set ` +
				`FileDescriptorName= in its socket unit`}},
		{"public twice: dice-admin.socket copied from dice.socket",
			[]func(*testing.T) *os.File{tcp, unix}, "public:public",
			[]string{"the unix socket", "is named public, which is for TCP",
				"It wants FileDescriptorName=admin in dice-admin.socket",
				"no socket named admin"}},
		{"admin twice", []func(*testing.T) *os.File{tcp, unix, unix}, "public:admin:admin",
			[]string{"the name admin is given to 2 sockets", "with one ListenStream= line"}},
		{"admin on TCP", []func(*testing.T) *os.File{tcp, tcp}, "public:admin",
			[]string{"the tcp socket", "is named admin, which is for the unix socket"}},
		{"a datagram socket", []func(*testing.T) *os.File{tcp, unix, udp},
			"public:admin:public", []string{"1 of the 3 fds are not stream sockets",
				"ListenStream= only"}},
		{"Accept=yes", []func(*testing.T) *os.File{conn, unix}, "public:admin",
			[]string{"is one connection, not a listening socket", "needs Accept=no"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var files []*os.File
			for _, fd := range tc.fds {
				files = append(files, fd(t))
			}
			code, out := stagetest.Exit(t, stagetest.Activated(files,
				[]string{"LISTEN_FDNAMES=" + tc.names}, "-idle", "1s"))
			assert.Equal(t, 1, code, out)
			for _, want := range tc.want {
				assert.Contains(t, out, want)
			}
		})
	}
}

// TestAdminConnectionHoldsIt: the idle timer counts the admin socket's connections
// too. A keep-alive connection to the admin socket that stays open and silent for
// two idle periods after its first request keeps the stage running: its second
// request is answered; it exits 0 once the connection closes.
func TestAdminConnectionHoldsIt(t *testing.T) {
	t.Parallel()
	stagetest.IdleExit(t, 2, "/stats", []string{"LISTEN_FDNAMES=public:admin"},
		func() (net.Listener, []*os.File) {
			admin := unixListener(t)
			return admin, []*os.File{stagetest.File(t, stagetest.TCPListener(t)),
				stagetest.File(t, admin)}
		})
}

// TestExitsWhenIdle: after a roll on the public socket, the stage exits 0 by itself
// once no connection has been open on any socket for -idle.
func TestExitsWhenIdle(t *testing.T) {
	t.Parallel()
	stagetest.IdleExit(t, 1, "/roll", []string{"LISTEN_FDNAMES=public:admin"},
		func() (net.Listener, []*os.File) {
			public := stagetest.TCPListener(t)
			return public, []*os.File{stagetest.File(t, public),
				stagetest.File(t, unixListener(t))}
		})
}

// TestStatsMethods: /stats takes GET and HEAD only; any other path on the admin
// socket is a 404 JSON error.
func TestStatsMethods(t *testing.T) {
	t.Parallel()
	admin := unixListener(t)
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, stagetest.TCPListener(t)),
		stagetest.File(t, admin)}, []string{"LISTEN_FDNAMES=public:admin"}, "-idle", "1m")
	stagetest.Start(t, cmd)
	client := unixClient(admin.Addr().String())
	resp, err := client.Post("http://dice/stats", "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
	status, _, body, err := get(client, "http://dice/")
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, status)
	assert.JSONEq(t, `{"error":"no such path \"/\" on the admin socket: try GET /stats"}`, body)
}
