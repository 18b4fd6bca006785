// Command 01-always-on serves dice on a port it opens itself, and runs until stopped.
package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"socket-dice/dice"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(*addr, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(addr string, log *slog.Logger) error {
	ln, err := listener(addr)
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid())
	return serve(ctx, ln, &dice.Handler{Log: log}, log)
}

// listener opens the port itself: this process holds it, and its memory, until it exits.
func listener(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// serve answers rolls on ln until ctx is done, then stops accepting and lets the
// requests in flight finish.
func serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	return dice.Serve(ctx, dice.NewServer(h, log), ln)
}
