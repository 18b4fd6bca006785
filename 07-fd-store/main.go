// Command 07-fd-store serves dice on a port that systemd opened, exits when idle, and
// leaves its open connections with systemd when stopped: a restart closes none.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"socket-dice/dice"
)

func main() {
	idle := flag.Duration("idle", 30*time.Second, "exit after this long with no connection")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(*idle, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(idle time.Duration, log *slog.Logger) error {
	ln, taken, err := listener()
	if err != nil {
		return err
	}
	store, err := openFDStore(len(taken) > 0)
	if err != nil {
		return err
	}
	// systemctl stop and restart send SIGTERM; Ctrl-C sends SIGINT.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid(), "taken_back", len(taken))
	return serve(ctx, ln, taken, &dice.Handler{Log: log}, log, idle, store)
}

// listener takes dice.socket's port as fd 3, and the connections that follow it.
func listener() (net.Listener, []net.Conn, error) {
	// systemd sets LISTEN_FDS and LISTEN_PID=<our pid>; checkEnv explains if it did not.
	if err := checkEnv(); err != nil {
		return nil, nil, err
	}
	// New in this stage: stored connections come after the socket, named "keepalive"
	// in LISTEN_FDNAMES. Files unsets LISTEN_* so that no child takes them for its own.
	return split(activation.Files(true))
}

// serve answers rolls on ln and on the connections taken back until ctx is done, then
// stops accepting, lets the requests in flight finish and hands the connections over.
func serve(ctx context.Context, ln net.Listener, taken []net.Conn, h *dice.Handler,
	log *slog.Logger, idle time.Duration, store *fdStore) error {
	// Once no connection has been open for idle, serve ends as if stopped (stage 03).
	ctx, exit := context.WithCancelCause(ctx)
	defer exit(nil)
	srv := dice.NewServer(h, log)
	srv.ConnState = startIdleTimer(idle, func() {
		log.Info("idle, exiting", "after", idle, "rolls", h.Rolls())
		_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
		exit(errIdle)
	}, func(open int) {
		// `systemctl status dice.service` shows this line (Type=notify).
		_, _ = daemon.SdNotify(false, fmt.Sprintf("STATUS=served %d rolls; %d connections "+
			"open; exits after %s idle", h.Rolls(), open, idle))
	}).ConnState
	// READY=1 tells systemd (Type=notify) that the service is up.
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	// New in this stage: each connection open at the stop goes to systemd's fd store.
	return serveAndHandOver(ctx, srv, ln, taken, store)
}
