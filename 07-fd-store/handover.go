package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"socket-dice/dice"
)

// errIdle ends serving at an idle exit: no start follows, and systemd would close
// whatever this process stored.
var errIdle = errors.New("idle")

// serveAndHandOver answers on ln, and on the connections taken back from the fd store,
// until ctx is done. Then it closes its copy of ln (new connections wait in systemd's),
// lets every request in flight finish, hands each connection to store as soon as it
// waits for its next request with nothing of it read, and returns when the last one is
// gone. Without a store (nil), or at an idle exit (ctx's cause errIdle), it answers
// and closes them, as stage 03 does: a connection accepted as the idle timer fired
// would otherwise go to a store that nobody takes back.
func serveAndHandOver(ctx context.Context, srv *http.Server, ln net.Listener,
	taken []net.Conn, store *fdStore) error {
	k := &keeper{conns: map[*keptConn]bool{}, gone: make(chan struct{})}
	next := srv.ConnState
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		k.connState(c.(*keptConn), state)
		if next != nil {
			next(c, state)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(&keepListener{ln, taken, store}) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	keep := store != nil && !errors.Is(context.Cause(ctx), errIdle)
	if !keep {
		srv.SetKeepAlivesEnabled(false) // Closes the idle connections, as stage 03 does.
	}
	ln.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		return err
	}
	// srv.Serve has returned: every connection it accepted is in k.
	select {
	case <-k.handOver(keep):
		if !keep {
			return nil
		}
		return store.Barrier(5 * time.Second)
	case <-time.After(dice.ShutdownTimeout):
		return fmt.Errorf("connections still open %s after the stop: %w",
			dice.ShutdownTimeout, srv.Close())
	}
}

// keepListener hands out the connections taken back from the fd store first, then
// those ln accepts, each wrapped in a keptConn. Only srv.Serve calls Accept.
type keepListener struct {
	net.Listener
	taken []net.Conn
	store *fdStore
}

func (l *keepListener) Accept() (net.Conn, error) {
	if len(l.taken) > 0 {
		c := l.taken[0]
		l.taken = l.taken[1:]
		// It waited idle for its next request before the restart; it may wait as long
		// again (IdleTimeout), not just the ReadHeaderTimeout of a new connection.
		return &keptConn{Conn: c, store: l.store, idleUntil: time.Now().Add(dice.IdleTimeout)}, nil
	}
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &keptConn{Conn: c, store: l.store}, nil
}

// keeper knows the open connections, and hands them over at the stop.
type keeper struct {
	mu       sync.Mutex
	conns    map[*keptConn]bool
	stopping bool
	gone     chan struct{} // closed when no connection is left after handOver
}

func (k *keeper) connState(c *keptConn, state http.ConnState) {
	switch state {
	case http.StateIdle:
		c.boundary() // The answer is out; what comes next is a new request.
	case http.StateClosed, http.StateHijacked:
		k.mu.Lock()
		delete(k.conns, c)
		if k.stopping && len(k.conns) == 0 {
			close(k.gone)
		}
		k.mu.Unlock()
	case http.StateNew:
		k.mu.Lock()
		k.conns[c] = true
		k.mu.Unlock()
	}
}

// handOver tells every connection to go to the store once it can (unless !keep), and
// returns a channel closed when all are gone. No connection may be added after it.
func (k *keeper) handOver(keep bool) <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopping = true
	for c := range k.conns {
		if keep { // Else net/http answers and closes it, keep-alives off (stage 03).
			c.handOver()
		}
	}
	if len(k.conns) == 0 {
		close(k.gone)
	}
	return k.gone
}

// keptConn is a connection that goes to systemd's fd store instead of being closed,
// when the server stops while it waits for a request of which nothing has been read.
//
// net/http reads a kept-alive connection in its own goroutine: it blocks in Read until
// the next request begins, and reports StateActive only once its header is in. The
// stop interrupts that Read with a read deadline in the past. If nothing of a request
// has been read, Read returns io.EOF (net/http closes the connection without a word)
// and Close stores it: every byte the client sent since is still in the socket, for
// the next instance. If a request has begun, Read retries with net/http's own
// deadline; the request is answered, and the connection stored when idle again.
type keptConn struct {
	net.Conn
	store *fdStore

	mu        sync.Mutex
	deadline  time.Time // the read deadline net/http asked for
	idleUntil time.Time // taken back: no read deadline before this, until a byte comes
	read      int       // bytes read since the last answer (or since the start)
	tail      string    // the last 4 bytes read, to tell a pipelined request
	handing   bool      // the server stops
	handed    bool      // Read gave up: Close stores the connection
}

// clean: net/http holds no byte of a request not yet answered. After a request
// without a body the last bytes read end its header; anything else may be the start
// of a request sent before the answer came (pipelining), held in net/http's buffer.
func (c *keptConn) clean() bool {
	return c.read == 0 && (c.tail == "" || c.tail == "\r\n\r\n")
}

func (c *keptConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.handing && c.clean() {
			c.handed = true
			c.mu.Unlock()
			return 0, io.EOF
		}
		c.mu.Unlock()
		n, err := c.Conn.Read(p)
		c.mu.Lock()
		c.read += n
		if n > 0 {
			c.idleUntil = time.Time{} // A request has begun: net/http's deadlines hold.
		}
		c.tail = lastBytes(c.tail+string(p[max(0, n-4):n]), 4)
		// A deadline error that net/http's own deadline does not explain is the stop's.
		stop := errors.Is(err, os.ErrDeadlineExceeded) && c.handing &&
			(c.deadline.IsZero() || time.Now().Before(c.deadline))
		if stop && !c.clean() {
			_ = c.Conn.SetReadDeadline(c.deadline) // A request has begun: read on.
		}
		c.mu.Unlock()
		if !stop {
			return n, err
		}
	}
}

// SetReadDeadline records net/http's deadline; once stopping, a clean connection
// keeps the past one that interrupts its Read.
func (c *keptConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if c.handing && c.clean() {
		t = time.Unix(1, 0)
	} else if !t.IsZero() && t.Before(c.idleUntil) {
		t = c.idleUntil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *keptConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.Conn.SetWriteDeadline(t))
}

// boundary: the answer to the last request is out; the next bytes are a new request.
func (c *keptConn) boundary() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = 0
	if c.handing && c.clean() {
		_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// handOver: the server stops. A clean connection's Read is interrupted now.
func (c *keptConn) handOver() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handing = true
	if c.clean() {
		_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// Close stores the connection first if Read gave it up. The process's own copy is
// closed either way; the client's connection stays open while systemd holds one.
func (c *keptConn) Close() error {
	c.mu.Lock()
	handed := c.handed
	c.mu.Unlock()
	var err error
	if handed {
		err = c.store.Store(c.Conn)
	}
	return errors.Join(err, c.Conn.Close())
}

func lastBytes(s string, n int) string { return s[max(0, len(s)-n):] }
