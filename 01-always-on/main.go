// Command 01-always-on is the dice service as the blog post starts it: a process that
// opens its own port and runs forever, whether anybody rolls dice or not.
//
//	./bin/01-always-on -addr 127.0.0.1:8080
//	curl -i 127.0.0.1:8080/roll
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

	"example.com/socket-dice/dice"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	delay := flag.Duration("delay", 0, "hold each answer this long (to watch a graceful stop)")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(*addr, *delay, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(addr string, delay time.Duration, log *slog.Logger) error {
	ln, err := listener(addr)
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid())
	return serve(ctx, ln, &dice.Handler{Log: log, Delay: delay}, log)
}

// listener opens the port itself: from now until it exits, this process holds the
// port and its memory, whether anybody calls or not.
func listener(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// serve answers rolls on ln until ctx is done, then stops accepting and lets the
// requests in flight finish.
func serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	return dice.Serve(ctx, dice.NewServer(h, log), ln)
}
