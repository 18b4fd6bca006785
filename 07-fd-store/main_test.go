package main

import (
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

func TestWithoutSystemdItSaysWhatToDo(t *testing.T) {
	t.Parallel()
	code, out := stagetest.Exit(t, stagetest.Self("-idle", "1s"))
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "LISTEN_FDS unset")
	assert.Contains(t, out, "make run-stage 7")
}

// TestExitsWhenIdle passes a listening socket as systemd would: the stage serves
// a roll, then exits 0 on its own once no connection has been open for -idle.
func TestExitsWhenIdle(t *testing.T) {
	t.Parallel()
	stagetest.IdleExit(t, 1, "/roll", nil, tcpSocket(t))
}

// TestKeepAliveHoldsIt: a keep-alive connection that stays open and silent for two
// idle periods after its first request holds the stage (the timer counts
// connections, not requests): its second request is answered, and the stage exits
// once the connection closes.
func TestKeepAliveHoldsIt(t *testing.T) {
	t.Parallel()
	stagetest.IdleExit(t, 2, "/roll", nil, tcpSocket(t))
}

// tcpSocket makes the one listening socket systemd passes the stage.
func tcpSocket(t *testing.T) func() (net.Listener, []*os.File) {
	return func() (net.Listener, []*os.File) {
		ln := stagetest.TCPListener(t)
		return ln, []*os.File{stagetest.File(t, ln)}
	}
}

// TestTakesBackStoredConnections passes, after the listening socket, connections
// named "keepalive", as systemd passes them from the fd store: the stage answers a
// request on one, and on a new connection too; one that its client closed meanwhile
// is dropped, and holds the idle exit no more than it fails the start.
func TestTakesBackStoredConnections(t *testing.T) {
	t.Parallel()
	ln := stagetest.TCPListener(t)
	server, client := stagetest.TCPConn(t)
	// A second stored connection, closed by its client while in the store: dropped.
	gone, goneClient := stagetest.TCPConn(t)
	require.NoError(t, goneClient.Close())
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, ln), stagetest.File(t, gone),
		stagetest.File(t, server)}, []string{"LISTEN_FDNAMES=dice.socket:keepalive:keepalive"},
		"-idle", "100ms")
	exited := stagetest.Start(t, cmd)
	server.Close() // The stage holds them now, as systemd's copies are dropped.
	gone.Close()

	pids := dicetest.KeepAliveRolls(t, client, 2)
	assert.Equal(t, []string{strconv.Itoa(cmd.Process.Pid), strconv.Itoa(cmd.Process.Pid)}, pids)
	status, pid, _ := dicetest.Roll(t, dicetest.NewConn, "http://"+ln.Addr().String())
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, cmd.Process.Pid, pid)
	require.NoError(t, client.Close())
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status 0 when idle")
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5 s after the last connection closed, with -idle 100ms")
	}
}

// TestWrongActivation: what systemd passes must be one listening socket, and stored
// connections; anything else is refused with what to change.
func TestWrongActivation(t *testing.T) {
	t.Parallel()
	server, _ := stagetest.TCPConn(t)
	for _, tt := range []struct {
		name  string
		files []*os.File
		names string
		says  string
	}{
		{"no listening socket", []*os.File{stagetest.File(t, server)}, "keepalive",
			"0 sockets besides the stored connections"},
		{"two listening sockets", []*os.File{stagetest.File(t, stagetest.TCPListener(t)),
			stagetest.File(t, stagetest.TCPListener(t))}, "a:b", "give the socket unit one ListenStream="},
		{"Accept=yes", []*os.File{stagetest.File(t, server)}, "connection", "Accept=yes"},
		{"a datagram socket", []*os.File{stagetest.File(t, stagetest.UDPConn(t))}, "dice.socket",
			"not a stream socket"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out := stagetest.Exit(t, stagetest.Activated(tt.files,
				[]string{"LISTEN_FDNAMES=" + tt.names}, "-idle", "1s"))
			assert.Equal(t, 1, code)
			assert.Contains(t, out, tt.says)
		})
	}
}
