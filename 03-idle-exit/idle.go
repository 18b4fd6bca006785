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
	after    time.Duration
	onChange func(open int)

	mu    sync.Mutex
	open  int
	timer *time.Timer
}

// startIdleTimer returns a timer whose clock runs from now, as no connection is open
// yet. onIdle runs once, in its own goroutine. onChange, if not nil, is called with
// the number of open connections each time it changes, outside the timer's lock.
func startIdleTimer(after time.Duration, onIdle func(), onChange func(open int)) *idleTimer {
	return &idleTimer{after: after, onChange: onChange, timer: time.AfterFunc(after, onIdle)}
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
	open := t.open
	t.mu.Unlock()
	if t.onChange != nil {
		t.onChange(open)
	}
}

// Open is the number of connections open now.
func (t *idleTimer) Open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}
