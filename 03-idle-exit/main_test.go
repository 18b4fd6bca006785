package main

import (
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"

	"socket-dice/internal/stagetest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

func TestWithoutSystemdItSaysWhatToDo(t *testing.T) {
	t.Parallel()
	code, out := stagetest.Exit(t, stagetest.Self("-idle", "1s"))
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "LISTEN_FDS unset")
	assert.Contains(t, out, "make run-stage 3")
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
