package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFiresWithoutAnyConnection(t *testing.T) {
	t.Parallel()
	fired := make(chan struct{})
	startIdleTimer(50*time.Millisecond, func() { close(fired) }, nil)
	select {
	case <-fired:
	case <-time.After(2 * time.Second):
		t.Fatal("no connection for 50ms, yet onIdle did not run within 2s")
	}
}

// TestFiresOnce: a connection that comes after onIdle ran (while the server shuts
// down) starts the clock again when it closes; onIdle must not run a second time.
func TestFiresOnce(t *testing.T) {
	t.Parallel()
	const after = 20 * time.Millisecond
	var runs atomic.Int32
	fired := make(chan struct{}, 2)
	tm := startIdleTimer(after, func() { runs.Add(1); fired <- struct{}{} }, nil)
	<-fired
	c := &net.TCPConn{}
	tm.ConnState(c, http.StateNew)
	tm.ConnState(c, http.StateClosed)
	time.Sleep(5 * after) // The clock has run out again (unless the machine is very slow).
	assert.Equal(t, int32(1), runs.Load(), "onIdle runs once")
}

func TestOpenConnectionHoldsTheClock(t *testing.T) {
	t.Parallel()
	const after = 20 * time.Millisecond
	c1, c2 := &net.TCPConn{}, &net.TCPConn{}
	var fired *atomic.Bool
	var reported chan int
	var tm *idleTimer
	// The clock runs from the start: if c1 came later than after (a loaded machine),
	// the timer may rightly have fired before it. Such a try tells nothing; try again.
	for {
		start := time.Now()
		f, r := &atomic.Bool{}, make(chan int, 10)
		tm = startIdleTimer(after, func() { f.Store(true) }, func(open int) { r <- open })
		tm.ConnState(c1, http.StateNew)
		if time.Since(start) < after {
			fired, reported = f, r
			break
		}
	}
	tm.ConnState(c2, http.StateNew)
	tm.ConnState(c1, http.StateActive)
	tm.ConnState(c1, http.StateIdle) // Keep-alive between two requests: still open.
	tm.ConnState(c2, http.StateHijacked)
	time.Sleep(3 * after)
	assert.False(t, fired.Load(), "a connection is still open")
	assert.Equal(t, 1, tm.Open())

	tm.ConnState(c1, http.StateClosed)
	assert.Eventually(t, fired.Load, 2*time.Second, 10*time.Millisecond,
		"the last connection closed: onIdle should run")
	// Reports may be coalesced, but the last one has the latest number.
	last := -1
	assert.Eventually(t, func() bool {
		for {
			select {
			case last = <-reported:
			default:
				return last == 0
			}
		}
	}, 2*time.Second, 10*time.Millisecond, "the last report says 0 open")
}

// TestWithHTTPServer runs the idle timer under a real http.Server: a keep-alive
// connection keeps it busy, and it fires once the connection is closed.
func TestWithHTTPServer(t *testing.T) {
	t.Parallel()
	for !withHTTPServer(t) {
		t.Log("the first connection came after the idle time: trying again")
	}
}

// withHTTPServer is TestWithHTTPServer. The clock runs from the start: if the first
// connection came later than the idle time (a loaded machine), the timer may rightly
// have fired before it, and the try tells nothing: it returns false.
func withHTTPServer(t *testing.T) bool {
	const after = 20 * time.Millisecond
	fired := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(
		func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	start := time.Now()
	tm := startIdleTimer(after, func() { close(fired) }, nil)
	var first sync.Once
	var late atomic.Bool
	srv.Config.ConnState = func(c net.Conn, state http.ConnState) {
		tm.ConnState(c, state)
		if state == http.StateNew {
			first.Do(func() { late.Store(time.Since(start) >= after) })
		}
	}
	srv.Start()
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{}}
	// The requests go on for three idle periods: a timer that the connection did not
	// hold would fire before they end.
	deadline := time.Now().Add(3 * after)
	for time.Now().Before(deadline) {
		resp, err := client.Get(srv.URL)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if late.Load() {
			client.CloseIdleConnections()
			return false
		}
		time.Sleep(after / 5)
	}
	select {
	case <-fired:
		t.Fatal("fired while a keep-alive connection was in use")
	default:
	}
	// Usually one connection served them all; under load the client may have dialled
	// a second before the first went back to its pool. Either way one is still open.
	assert.GreaterOrEqual(t, tm.Open(), 1, "the kept-alive connection is still open")

	client.CloseIdleConnections()
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection closed, yet onIdle did not run within 10s")
	}
	return true
}
