package main

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// idleTimer calls a function once no connection has been open for its duration.
// Its ConnState method is meant for http.Server.ConnState.
//
// It counts connections, not requests: a keep-alive connection between two requests
// is not idle. Such a connection stops counting when it closes, which the server's
// IdleTimeout (or ReadHeaderTimeout, for a client that sends nothing) makes sure of.
type idleTimer struct {
	after   time.Duration
	changed chan struct{} // a change of open not yet reported

	mu    sync.Mutex
	open  int
	timer *time.Timer
}

// startIdleTimer returns a timer whose clock runs from now, as no connection is open
// yet. onIdle runs once, in its own goroutine: a connection that comes while the
// server shuts down starts the clock again when it closes, and it runs out again, but
// onIdle has run. onChange, if not nil, is called with the number of open connections
// after it changes, from a goroutine of its own: never under the timer's lock, and the
// last call always has the latest number.
func startIdleTimer(after time.Duration, onIdle func(), onChange func(open int)) *idleTimer {
	t := &idleTimer{after: after, changed: make(chan struct{}, 1)}
	t.timer = time.AfterFunc(after, sync.OnceFunc(onIdle))
	if onChange != nil {
		go func() {
			for range t.changed {
				onChange(t.Open())
			}
		}()
	}
	return t
}

// ConnState counts a connection from StateNew until StateClosed or StateHijacked,
// stops the clock at the first one and starts it again when the last one closes.
func (t *idleTimer) ConnState(_ net.Conn, state http.ConnState) {
	t.mu.Lock()
	switch state {
	case http.StateNew:
		t.open++
		if t.open == 1 {
			t.timer.Stop()
		}
	case http.StateClosed, http.StateHijacked:
		t.open--
		if t.open == 0 {
			t.timer.Reset(t.after)
		}
	default:
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default: // A report is due already; it will read the new number.
	}
}

// Open is the number of connections open now.
func (t *idleTimer) Open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}
