// Command 02-socket-activated serves dice on a port that systemd opened and passed in.
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
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"example.com/socket-dice/dice"
	"example.com/socket-dice/internal/activated"
)

func main() {
	delay := flag.Duration("delay", 0, "hold each answer this long (to watch a graceful stop)")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(*delay, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(delay time.Duration, log *slog.Logger) error {
	ln, err := listener()
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid())
	return serve(ctx, ln, &dice.Handler{Log: log, Delay: delay}, log)
}

// New in this stage: listener takes the port systemd opened (dice.socket) as fd 3.
func listener() (net.Listener, error) {
	// systemd set LISTEN_FDS=1 and LISTEN_PID=<our pid>; CheckEnv explains if it did not.
	if err := activated.CheckEnv("-l 127.0.0.1:8080"); err != nil {
		return nil, err
	}
	return activated.Listener(activation.Listeners())
}

// serve answers rolls on ln until ctx is done, then stops accepting and lets the
// requests in flight finish.
func serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	return dice.Serve(ctx, dice.NewServer(h, log), ln)
}
