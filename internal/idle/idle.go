// Package idle tells an http.Server when nobody has been connected to it for a while.
//
// It counts connections, not requests: a keep-alive connection between two requests
// is not idle. Such a connection stops counting when it closes, which the server's
// IdleTimeout (or ReadHeaderTimeout, for a client that sends nothing) makes sure of.
package idle

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Timer calls a function once no connection has been open for its duration.
// Its ConnState method is meant for http.Server.ConnState.
type Timer struct {
	after    time.Duration
	onIdle   func()
	onChange func(open int)

	mu    sync.Mutex
	open  int
	timer *time.Timer
}

// Start returns a Timer whose clock runs from now, as no connection is open yet.
// onIdle runs once, in its own goroutine. onChange, if not nil, is called with the
// number of open connections each time it changes.
func Start(after time.Duration, onIdle func(), onChange func(open int)) *Timer {
	t := &Timer{after: after, onIdle: onIdle, onChange: onChange}
	t.timer = time.AfterFunc(after, onIdle)
	return t
}

// ConnState counts a connection from StateNew until StateClosed or StateHijacked,
// stops the clock at the first one and starts it again when the last one closes.
func (t *Timer) ConnState(_ net.Conn, state http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
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
		return
	}
	if t.onChange != nil {
		t.onChange(t.open)
	}
}

// Open is the number of connections open now.
func (t *Timer) Open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}
