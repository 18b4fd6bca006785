package dice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Timeouts of every stage's server.
const (
	// ReadHeaderTimeout closes a connection that has not sent its request
	// headers in time: a silent client cannot hold a connection (or, in
	// stage 03, keep the service from going idle) for long.
	ReadHeaderTimeout = 5 * time.Second
	// IdleTimeout closes a keep-alive connection that sends no next request.
	IdleTimeout = 30 * time.Second
	// ShutdownTimeout is how long the connections open at a stop may take to get
	// their answers; systemd waits 90 s (TimeoutStopSec=) before it kills.
	ShutdownTimeout = 30 * time.Second
	// MaxHeaderBytes bounds request headers; larger ones get 431.
	MaxHeaderBytes = 16 << 10
)

// NewServer returns an http.Server for h with the timeouts above and net/http's
// own errors (malformed requests, TLS noise) logged through slog.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Serve answers on ln until ctx is done, then stops the way socket activation needs:
// it closes its copy of ln first, so that new connections wait in systemd's copy of
// the socket (for the next instance, if any); it answers every connection it has
// already accepted, once each (keep-alives are off from then on); and it returns nil
// when the last one has closed, or an error after ShutdownTimeout.
//
// It does not call http.Server.Shutdown, which closes a connection that was accepted
// before it but whose request is read after it without an answer (golang/go#75591):
// when an idle service exits just as a client connects, that client would lose its
// request. Serve counts connections through srv.ConnState; a hook set before still runs.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	open := countConns(srv)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	srv.SetKeepAlivesEnabled(false) // This also closes the idle keep-alive connections.
	ln.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		return err
	}
	// srv.Serve has returned: every connection it accepted is counted.
	select {
	case <-open.drained():
		return nil
	case <-time.After(ShutdownTimeout):
		return fmt.Errorf("%d connections still open %s after the stop: %w",
			open.open(), ShutdownTimeout, srv.Close())
	}
}

// conns counts the open connections of a server.
type conns struct {
	mu       sync.Mutex
	n        int
	stopping bool
	zero     chan struct{} // closed when n is 0 after drained was called
}

// countConns counts srv's connections from StateNew to StateClosed or StateHijacked,
// then calls the ConnState hook srv had, if any.
func countConns(srv *http.Server) *conns {
	c := &conns{zero: make(chan struct{})}
	next := srv.ConnState
	srv.ConnState = func(nc net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			c.add(1)
		case http.StateClosed, http.StateHijacked:
			c.add(-1)
		}
		if next != nil {
			next(nc, state)
		}
	}
	return c
}

func (c *conns) add(delta int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += delta
	c.closeIfZero()
}

func (c *conns) closeIfZero() {
	select {
	case <-c.zero:
	default:
		if c.stopping && c.n == 0 {
			close(c.zero)
		}
	}
}

// open is the number of connections open now.
func (c *conns) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// drained returns a channel that is closed once no connection is open; no new
// connection may come after the first call.
func (c *conns) drained() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	c.closeIfZero()
	return c.zero
}

// NewLogger logs to stderr, which systemd hands to the journal. Under systemd
// (JOURNAL_STREAM is set) the journal stamps each line, so the time is left out.
func NewLogger() *slog.Logger {
	opts := &slog.HandlerOptions{}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
