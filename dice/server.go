package dice

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
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
	// ShutdownTimeout is how long requests in flight may take to finish after
	// SIGTERM; systemd waits 90 s (TimeoutStopSec=) before it kills.
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

// Serve answers on ln until ctx is done, then stops accepting, waits for the
// requests in flight (at most ShutdownTimeout) and returns nil.
// Shutdown closes our copy of ln; a socket systemd passed us stays open in systemd.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(stopCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
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
