package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice"
	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
	"socket-dice/internal/systemdtest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

// TestWrongActivation: without systemd, or handed a listening socket (a socket
// unit with Accept=no), the stage exits 1 and names the fix.
func TestWrongActivation(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
	server, client := stagetest.TCPConn(t)
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, server)},
		[]string{"LISTEN_FDNAMES=connection"})
	exited := stagetest.Start(t, cmd)
	require.NoError(t, server.Close(), "the stage has its own copy")

	for _, pid := range dicetest.KeepAliveRolls(t, client, 10) {
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
// cut off after the server's ReadHeaderTimeout (dice.ReadHeaderTimeout; 50 ms here),
// and serve returns, so that the process exits.
func TestSilentClientCannotHoldAProcess(t *testing.T) {
	t.Parallel()
	server, client := stagetest.TCPConn(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := dice.NewServer(&dice.Handler{Log: log}, log)
	srv.ReadHeaderTimeout = 50 * time.Millisecond
	served := make(chan error, 1)
	go func() { served <- serve(context.Background(), server, srv) }()
	select {
	case err := <-served:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("a silent client held serve 10 s, ReadHeaderTimeout is %s",
			srv.ReadHeaderTimeout)
	}
	require.NoError(t, client.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err := client.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "the server closed the silent connection")
}

// TestSystemdSocketActivateAccept is the no-units quick path from the README:
// systemd-socket-activate --accept starts the stage once per connection.
func TestSystemdSocketActivateAccept(t *testing.T) {
	t.Parallel()
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
		status, pid, _ := dicetest.Roll(t, client, "http://"+addr)
		assert.Equal(t, http.StatusOK, status)
		pids[pid] = true
	}
	assert.Len(t, pids, 3, "one process per connection")
}
