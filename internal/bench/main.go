// Command bench measures the stages side by side under a real systemd, with the blog
// post's Flask app and with floors (floor/, cfloor/), each in a private user manager of
// its own (internal/systemdtest); docs/bench.md says how.
//
//	go run ./internal/bench            the full run (minutes): every figure, docs/bench.md
//	go run ./internal/bench -quick     a smoke run (< 1 min), into a temporary directory
//	go run ./internal/bench -measure   only the RSS table, on stdout (make measure)
//
// Run it from the repository's top directory, on a quiet machine (a low `uptime`).
// Its parts: targets.go, what is measured and its units (a new stage adds its rows
// there); load.go, the measurements; report.go, the tables and figures.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

var (
	quick   = flag.Bool("quick", false, "a smoke run: few iterations, output to a temp dir")
	measure = flag.Bool("measure", false, "only the RSS table, as Markdown on stdout")

	// The run's sizes, made small by -quick: cold starts, load rounds and their
	// durations, requests for RSS, clients for load, and 03's -idle.
	starts, rounds, requests, clients = 30, 3, 1000, 16
	warmDur, connDur, idle            = 3 * time.Second, 10 * time.Second, 100 * time.Millisecond

	top, _  = os.Getwd()
	tmp     string    // the binaries and the managers' state
	targets []*target // in the order of the tables' rows
	started = time.Now()
	load0   = loadavg()
)

func main() {
	flag.Parse()
	if *measure {
		idle = 2 * time.Second
	}
	if *quick {
		starts, rounds, requests = 3, 1, 100
		warmDur, connDur = 500*time.Millisecond, time.Second
	}
	err := run()
	stopAll()
	os.RemoveAll(tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) }

func run() (err error) {
	// A directory that services may read, with a short path: a manager's socket path
	// must fit in 108 bytes.
	if tmp, err = os.MkdirTemp("", "dice-bench-"); err != nil {
		return err
	}
	if addTargets(); !flaskOK {
		logf("%s", noFlask)
	}
	if err := errors.Join(os.Chmod(tmp, 0o755), build()); err != nil {
		return err
	}
	if !*measure {
		if _, err := fill(); err != nil { // a region bench.md lacks: fail before the load
			return err
		}
	}
	// On Ctrl-C every manager stops, once all are started.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	for _, t := range targets {
		if err := t.install(); err != nil {
			return fmt.Errorf("%s: %w", t.label, err)
		}
	}
	go func() {
		<-sig
		stopAll()
		os.RemoveAll(tmp)
		os.Exit(1)
	}()
	for _, t := range rows("rss") {
		if err := t.measureRSS(); err != nil {
			return fmt.Errorf("RSS of %s: %w", t.label, err)
		}
	}
	if !*measure {
		measureLoads()
		measureRestarts()
	}
	return write()
}
