package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
)

func TestMain(m *testing.M) { stagetest.Main(m, main) }

func TestWithoutSystemdItSaysWhatToDo(t *testing.T) {
	code, out := stagetest.Exit(t, stagetest.Self("-idle", "1s"))
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "LISTEN_FDS unset")
	assert.Contains(t, out, "make run-stage 3")
}

// TestExitsWhenIdle passes a listening socket as systemd would: the stage serves
// a roll, then exits 0 on its own once no connection has been open for -idle.
func TestExitsWhenIdle(t *testing.T) {
	t.Parallel()
	ln := stagetest.TCPListener(t)
	cmd := stagetest.Activated([]*os.File{stagetest.File(t, ln)}, nil, "-idle", "100ms")
	exited := stagetest.Start(t, cmd)

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	status, pid, _ := dicetest.Roll(t, client, "http://"+ln.Addr().String())
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, cmd.Process.Pid, pid)
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status 0 when idle")
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5 s after the last connection closed, with -idle 100ms")
	}
}

// TestKeepAliveHoldsIt: a keep-alive connection that stays open and silent for two
// idle periods after its first request holds the stage (the timer counts
// connections, not requests): its second request is answered, and the stage exits
// once the connection closes.
func TestKeepAliveHoldsIt(t *testing.T) {
	t.Parallel()
	for try := 1; !keepAliveHoldsIt(t); try++ {
		require.Less(t, try, 10, "in 10 tries the stage never took the connection in time")
		t.Log("the idle time ran out before the stage took the connection: trying again")
	}
}

// keepAliveHoldsIt is TestKeepAliveHoldsIt. The clock runs from the start: if the
// stage took the connection later than the idle time (a loaded machine), it rightly
// stopped first, and a request on the connection fails. Its log then says it stopped
// before any roll (rolls=0): such a try tells nothing, and it returns false. A timer
// that counted requests, not connections, stops after the first roll.
func keepAliveHoldsIt(t *testing.T) bool {
	ln := stagetest.TCPListener(t)
	// Connected first: the connection waits in the backlog for the stage to start.
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	f := stagetest.File(t, ln)
	var out bytes.Buffer // the stage's log, read once it has exited
	cmd := stagetest.Activated([]*os.File{f}, nil, "-idle", "50ms")
	cmd.Stdout, cmd.Stderr = &out, &out
	exited := stagetest.Start(t, cmd)
	// Only the stage holds the socket now: a connection it did not take is reset when
	// it exits.
	require.NoError(t, errors.Join(ln.Close(), f.Close()))
	stoppedFirst := func() bool {
		select {
		case <-exited:
			return strings.Contains(out.String(), "rolls=0")
		case <-time.After(5 * time.Second):
			return false
		}
	}

	r := bufio.NewReader(c)
	for i := range 2 {
		if i > 0 {
			time.Sleep(100 * time.Millisecond) // two idle periods
		}
		var resp *http.Response
		_, err := fmt.Fprintf(c, "GET /roll HTTP/1.1\r\nHost: dice\r\n\r\n")
		if err == nil {
			resp, err = http.ReadResponse(r, nil)
		}
		if err != nil && stoppedFirst() {
			return false
		}
		require.NoError(t, err, "request %d on the kept-alive connection", i)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
	select {
	case err := <-exited:
		t.Fatalf("exited (%v) while a keep-alive connection was in use", err)
	default:
	}
	require.NoError(t, c.Close())
	select {
	case err := <-exited:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5 s after the connection closed")
	}
	return true
}
