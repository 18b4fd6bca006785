package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice"
	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

func TestServeAnswersRolls(t *testing.T) {
	t.Parallel()
	ln := stagetest.TCPListener(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, &dice.Handler{Log: log}, log) }()

	status, pid, a := dicetest.Roll(t, http.DefaultClient, "http://"+ln.Addr().String())
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, os.Getpid(), pid)
	assert.GreaterOrEqual(t, a.Result, 1)
	stop()
	assert.NoError(t, <-done)
}

// TestWrongActivation passes the stage what no correct dice.socket would, and
// expects exit status 1 with a message that names the fix.
func TestWrongActivation(t *testing.T) {
	t.Parallel()
	server, _ := stagetest.TCPConn(t)
	tests := []struct {
		name     string
		cmd      *exec.Cmd
		mentions []string
	}{
		{"no systemd at all", stagetest.Self(), []string{"LISTEN_FDS unset",
			"make run-stage 2", "systemd-socket-activate -l 127.0.0.1:8080", "go run"}},
		{"sockets passed to another pid", withEnv(stagetest.Self(), "LISTEN_FDS=1",
			"LISTEN_PID=1"), []string{"to pid 1", "go run"}},
		{"two sockets", stagetest.Activated([]*os.File{
			stagetest.File(t, stagetest.TCPListener(t)),
			stagetest.File(t, stagetest.TCPListener(t))}, nil),
			[]string{"LISTEN_FDS=2", "exactly 1", "one ListenStream= line"}},
		{"a datagram socket", stagetest.Activated([]*os.File{
			stagetest.File(t, stagetest.UDPConn(t))}, nil),
			[]string{"not a stream socket", "ListenStream="}},
		{"a connected socket (Accept=yes)", stagetest.Activated([]*os.File{
			stagetest.File(t, server)}, []string{"LISTEN_FDNAMES=connection"}),
			[]string{"one connection, not a listening socket", "Accept=no", "04-accept-yes"}},
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

func withEnv(cmd *exec.Cmd, env ...string) *exec.Cmd {
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// TestActivatedByHand passes a listening socket as systemd would: the stage serves
// on it, as the process with the pid LISTEN_PID named, and stops on SIGTERM.
func TestActivatedByHand(t *testing.T) {
	t.Parallel()
	ln := stagetest.TCPListener(t)
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, ln)}, nil)
	require.NoError(t, cmd.Start())
	base := "http://" + ln.Addr().String()

	status, pid, _ := dicetest.Roll(t, http.DefaultClient, base)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, cmd.Process.Pid, pid, "the shim exec'd the stage in its own pid")
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	assert.NoError(t, cmd.Wait())
}
