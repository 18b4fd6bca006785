// Command bench measures the five stages side by side under a real systemd, and
// compares them with the blog post's Flask app (always on, socket-activated, behind
// stage 05's proxy) and with floors: programs that only answer fd 3, started by the
// same units. Each target runs in a private user manager of its own
// (internal/systemdtest), its units installed as committed plus drop-ins.
//
//	go run ./internal/bench            the full run (minutes): docs/bench.md, bench*.svg
//	go run ./internal/bench -quick     a smoke run (< 1 min), into a temporary directory
//	go run ./internal/bench -measure   only the RSS table, on stdout (make measure)
//
// Run it from the repository's top directory, on a quiet machine (a low `uptime`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"example.com/socket-dice/internal/systemdtest"
)

const python = "/usr/bin/python3" // Debian's, with python3-flask; not a venv's on PATH

var (
	quick   = flag.Bool("quick", false, "a smoke run: few iterations, output to a temp dir")
	measure = flag.Bool("measure", false, "only the RSS table, as Markdown on stdout")

	// The run's sizes, made small by -quick: cold starts, load rounds and their
	// durations, requests for RSS, clients for load, and 03's -idle.
	starts, rounds, requests, clients = 30, 3, 1000, 16
	warmDur, connDur, idle            = 3 * time.Second, 10 * time.Second, 100 * time.Millisecond

	top, _  = os.Getwd()
	tmp     string // the binaries and the managers' state
	started = time.Now()
	load0   = loadavg()
	targets []*target
)

// The targets of each table and chart, in their order.
var (
	rssKeys  = []string{"01", "02", "03", "04", "05", "05f", "fs", "flask"}
	coldKeys = []string{"02", "03", "04", "05", "05f", "fs", "f02", "f03", "f04", "c04", "flask"}
	warmKeys = []string{"01", "02", "03", "05", "05f", "fs", "flask"}
	connKeys = []string{"04", "f04", "c04"}
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
	// A directory that services may read and whose path is short: a manager's socket
	// path must fit in 108 bytes.
	if tmp, err = os.MkdirTemp("", "dice-bench-"); err != nil {
		return err
	}
	if err := errors.Join(os.Chmod(tmp, 0o755), build()); err != nil {
		return err
	}
	addTargets()
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
	for _, t := range pick(rssKeys...) {
		if err := t.measureRSS(); err != nil {
			return fmt.Errorf("RSS of %s: %w", t.label, err)
		}
	}
	if !*measure {
		measureLoads()
	}
	return write()
}

// build builds the stages into tmp/bin/ as `make build` does. InstallStage runs
// <dir>/<stage>: the Go floor goes to tmp/floor/, the C floor (given a C compiler) to
// tmp/cfloor/, under the names of the stages they stand in for.
func build() error {
	gobuild := []string{"build", "-buildvcs=false", "-trimpath", "-ldflags=-s -w", "-o"}
	err := command("go", append(gobuild, tmp+"/bin/", "./01-always-on",
		"./02-socket-activated", "./03-idle-exit", "./04-accept-yes")...)
	if err != nil || *measure {
		return err
	}
	for _, stage := range []string{"02-socket-activated", "03-idle-exit", "04-accept-yes"} {
		err = command("go", append(gobuild, tmp+"/floor/"+stage, "./internal/bench/floor")...)
		if err != nil {
			return err
		}
	}
	os.Mkdir(tmp+"/cfloor", 0o755)
	if err := command("cc", "-static", "-O2", "-o", tmp+"/cfloor/04-accept-yes",
		"internal/bench/cfloor/floor.c"); err != nil {
		logf("no C floor (it needs a C compiler and a static libc: apt-get install gcc): %v", err)
	}
	return nil
}

// addTargets adds what is measured, each on a port of its own from 18100. -measure
// leaves out the floors; the C floor is left out where it could not be built.
func addTargets() {
	add := func(key, label, stage, dir string, dropIns ...string) *target {
		targets = append(targets, &target{key: key, label: label, stage: stage, dir: dir,
			port: 18100 + len(targets), dropIns: dropIns})
		return targets[len(targets)-1]
	}
	// Timing cold starts stops 02's service 30 times in a row: the default start limit
	// (5 starts in 10 s) would fail it after 5. 03's units size their own.
	noLimit := "# bench: stopped and started 30 times.\n[Unit]\nStartLimitIntervalSec=0\n"
	add("01", "01-always-on", "01-always-on", "bin")
	add("02", "02-socket-activated", "02-socket-activated", "bin", "dice.service", noLimit)
	add("03", "03-idle-exit", "03-idle-exit", "bin")
	add("04", "04-accept-yes", "04-accept-yes", "bin")
	// 05 with stage 01's program behind the proxy, and with the post's dice.py. The
	// proxy's idle time is at least 1 s: Flask closes its connection after each
	// response, and 100 ms could end the proxy between two requests.
	for _, key := range []string{"05", "05f"} {
		app := 18150 + len(targets)
		add(key, map[string]string{"05": "05-socket-proxyd", "05f": "05, Flask backend"}[key],
			"05-socket-proxyd", "bin", "dice-proxy.service", fmt.Sprintf("# bench: another "+
				"idle time and port.\n[Service]\nExecStart=\nExecStart=/usr/lib/systemd/"+
				"systemd-socket-proxyd --exit-idle-time=%s 127.0.0.1:%d\n",
				max(idle, time.Second), app),
			"dice-backend.service", fmt.Sprintf("# bench: another port.\n[Service]\n"+
				"Environment=PORT=%d\n", app)).flask = key == "05f"
	}
	// The post's next step: its dice.py on fd 3 (flask/activated.py), under 02's units.
	add("fs", "Flask, socket-activated", "02-socket-activated", "bin", "dice.service",
		noLimit+"[Service]\nEnvironment=PYTHONPATH="+top+"/05-socket-proxyd "+
			"PYTHONDONTWRITEBYTECODE=1\nExecStart=\nExecStart="+python+" "+top+
			"/internal/bench/flask/activated.py\n").flask = true
	// Not a stage: flask/dice-flask.service as it is, run on this checkout's dice.py.
	add("flask", "Flask, always on", "", "", "dice-flask.service", fmt.Sprintf(
		"# bench: this checkout's dice.py, another port.\n[Service]\nExecStart=\n"+
			"ExecStart=%s -m flask --app %s/05-socket-proxyd/dice.py run --host 127.0.0.1 "+
			"--port %d\n", python, top, 18100+len(targets))).flask = true
	if *measure {
		return
	}
	add("f02", "floor, 02's units", "02-socket-activated", "floor", "dice.service", noLimit)
	add("f03", "floor, 03's units", "03-idle-exit", "floor")
	add("f04", "floor, 04's units", "04-accept-yes", "floor")
	if _, err := os.Stat(tmp + "/cfloor/04-accept-yes"); err == nil {
		add("c04", "C floor, 04's units", "04-accept-yes", "cfloor")
	}
}

// pick is the targets of keys there are, in that order.
func pick(keys ...string) (ts []*target) {
	for _, k := range keys {
		for _, t := range targets {
			if t.key == k {
				ts = append(ts, t)
			}
		}
	}
	return ts
}

// get is the target key, or an empty one (nothing measured) if there is none.
func get(key string) *target {
	if ts := pick(key); len(ts) > 0 {
		return ts[0]
	}
	return &target{}
}

// command runs a program and logs it; its output goes into the error.
func command(name string, args ...string) error {
	logf("%s %s", name, strings.Join(args, " "))
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}

// output is the trimmed standard output of a command, "?" if it fails.
func output(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func loadavg() string { return output("cut", "-d", " ", "-f", "1-3", "/proc/loadavg") }

// target is one thing measured (a stage, a floor or Flask) in a systemd user manager
// of its own, and what was measured of it.
type target struct {
	key, label string
	stage      string   // the units in units/<stage>; "" for always-on Flask
	dir        string   // ExecStart= runs tmp/<dir>/<stage>
	dropIns    []string // unit, content, ...: what the run changes besides binary and port
	port       int
	flask      bool // the app is the blog's dice.py
	m          *systemdtest.Manager

	rss              [4]rss // started, after the 1st request, after n, closed and idle
	cold, warm, conn sample
}

// services are the services that start and stop act on, by stage.
var services = map[string]string{"": "dice-flask.service", "01-always-on": "dice.service",
	"02-socket-activated": "dice.service", "03-idle-exit": "dice.service",
	"04-accept-yes": "dice@.service", "05-socket-proxyd": "dice-proxy.service"}

func (t *target) socketActivated() bool { return t.stage != "" && t.stage != "01-always-on" }

// exits tells whether the service exits by itself: 03 and 05 when idle, 04 when done.
func (t *target) exits() bool { return t.socketActivated() && t.stage != "02-socket-activated" }

// install starts the target's manager, puts its units in place with their drop-ins
// and starts the socket.
func (t *target) install() (err error) {
	if t.m, err = systemdtest.Start(top, tmp+"/"+t.key); err != nil {
		return err
	}
	addr, args := "127.0.0.1:"+strconv.Itoa(t.port), []string{}
	switch t.stage {
	case "":
		err = command("install", "-Dm644", "internal/bench/flask/dice-flask.service",
			t.m.RuntimeDir()+"/systemd/user/dice-flask.service")
	case "01-always-on":
		addr, args = "", []string{"-addr", addr}
	case "03-idle-exit":
		args = []string{"-idle", idle.String()}
	case "05-socket-proxyd": // run-stage writes the app's drop-in from DICE_BACKEND
		err = os.Setenv("DICE_BACKEND", map[bool]string{true: "flask"}[t.flask])
	}
	if err == nil && t.stage != "" {
		err = t.m.InstallStage(t.stage, tmp+"/"+t.dir, addr, args...)
	}
	// zz-bench sorts after run-stage.conf, whose ExecStart= it may replace.
	for i := 0; err == nil && i < len(t.dropIns); i += 2 {
		err = t.m.DropIn(t.dropIns[i], "zz-bench", t.dropIns[i+1])
	}
	if err == nil && t.socketActivated() {
		err = t.systemctl("start", "dice.socket")
	}
	return err
}

// stopAll stops the targets' managers, with their units and processes.
func stopAll() {
	for _, t := range targets {
		if t.m != nil {
			if err := t.m.Stop(); err != nil {
				logf("%s: %v", t.label, err)
			}
		}
	}
}

// systemctl runs `systemctl --user args...` in the target's manager.
func (t *target) systemctl(args ...string) error {
	if out, err := t.m.Systemctl(args...); err != nil {
		return fmt.Errorf("systemctl --user %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// start starts an always-on service (01, Flask) and waits until its port listens.
func (t *target) start() error {
	if t.socketActivated() {
		return nil
	}
	if err := t.systemctl("start", services[t.stage]); err != nil {
		return err
	}
	return waitFor(20*time.Second, t.label+" to listen", func() bool {
		tcp, _ := os.ReadFile("/proc/net/tcp") // 0A: listening
		return strings.Contains(string(tcp), fmt.Sprintf(" 0100007F:%04X 00000000:0000 0A", t.port))
	})
}

// stop stops the service, unless it exits by itself.
func (t *target) stop() error {
	if t.exits() {
		return nil
	}
	return t.systemctl("stop", services[t.stage])
}

// memory is the target's processes (the main process of each dice service: 04's
// instances, 05's proxy and app) and their RSS: VmRSS of /proc/<pid>/status, what
// `ps -o rss=` shows.
func (t *target) memory() (r rss) {
	pids, _ := t.m.Prop("dice*.service", "MainPID")
	for _, pid := range strings.Fields(pids) {
		status, err := os.ReadFile("/proc/" + pid + "/status")
		if _, value, ok := strings.Cut(string(status), "VmRSS:"); err == nil && ok {
			kib, _ := strconv.Atoi(strings.Fields(value)[0])
			r.procs, r.kib = r.procs+1, r.kib+kib
		}
	}
	return r
}

// idle tells whether no process of the target runs.
func (t *target) idle() bool { return t.memory().procs == 0 }

// waitFor polls cond every millisecond until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
	}
	return nil
}

// measureRSS reads the RSS of t started, after one request, after n requests on one
// keep-alive connection, and idle after that connection closed.
func (t *target) measureRSS() error {
	logf("RSS: %s", t.label)
	c, pause := client(1), func() { time.Sleep(200 * time.Millisecond) }
	err := t.start()
	time.Sleep(500 * time.Millisecond)
	t.rss[0] = t.memory()
	for i := 0; i < requests && err == nil; i++ {
		err = roll(c, t.port)
		if i == 0 {
			pause()
			t.rss[1] = t.memory()
		}
	}
	pause()
	t.rss[2] = t.memory()
	c.CloseIdleConnections()
	time.Sleep(idle)
	if err == nil && t.exits() {
		err = waitFor(10*time.Second, t.label+" to exit", t.idle)
	}
	pause()
	t.rss[3] = t.memory()
	logf("  %s | %s | %s | %s", t.rss[0], t.rss[1], t.rss[2], t.rss[3])
	if err != nil {
		return err
	}
	return t.stop()
}

// measureLoads measures cold starts, warm throughput and stage 04's connections per
// second, the targets of each in alternating rounds.
func measureLoads() {
	alternate("cold starts", starts, coldKeys, func(t *target) *sample { return &t.cold },
		func(t *target) sample {
			// Always-on Flask is not socket-activated: its time runs from `systemctl
			// start` to its first full response.
			err := t.stop()
			if err == nil {
				err = waitFor(10*time.Second, t.label+" to have no process", t.idle)
			}
			time.Sleep(20 * time.Millisecond)
			start := time.Now()
			if err == nil {
				if err = t.start(); err == nil {
					err = roll(client(0), t.port)
				}
			}
			if d := time.Since(start); err == nil {
				return sample{ok: 1, elapsed: d, times: []time.Duration{d}}
			}
			return result(err)
		})
	alternate("warm throughput", rounds, warmKeys, func(t *target) *sample { return &t.warm },
		func(t *target) sample {
			c := client(clients)
			defer c.CloseIdleConnections()
			if err := t.start(); err != nil {
				return result(err)
			}
			hammer(c, t.port, 300*time.Millisecond) // warm-up
			s := hammer(c, t.port, warmDur)
			if err := t.stop(); err != nil {
				s.add(result(err))
			}
			return s
		})
	alternate("stage 04 connections/s", max(2, rounds), connKeys,
		func(t *target) *sample { return &t.conn }, func(t *target) sample {
			if err := waitFor(30*time.Second, t.label+" to be idle", t.idle); err != nil {
				return result(err)
			}
			s := hammer(peers(), t.port, connDur/time.Duration(max(2, rounds)))
			if state, _ := t.m.Prop("dice.socket", "SubState"); state != "listening" {
				s.add(result(fmt.Errorf("dice.socket no longer listens after the load")))
			}
			return s
		})
}

// alternate measures the targets of keys in turn, rounds times, adding up each one's
// samples in which(t).
func alternate(what string, rounds int, keys []string, which func(*target) *sample,
	measure func(*target) sample) {
	logf("%s: %d rounds, alternating", what, rounds)
	ts := pick(keys...)
	for i := range rounds {
		for j := range ts {
			t := ts[(i+j)%len(ts)]
			which(t).add(measure(t))
		}
	}
	for _, t := range ts {
		s := which(t)
		logf("  %-28s %5d ok, %8.0f/s, p50 %s, %d failed %v", t.label, s.ok, s.rate(),
			ms(s.p(50)), s.failed, s.err)
	}
}

// client is a net/http client keeping up to n connections to one host; with n = 0
// it opens a new connection for every request (Connection: close).
func client(n int) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: n, MaxConnsPerHost: n, DisableKeepAlives: n == 0}}
}

// peers is client(0) with its connections from 16 source addresses in turn, as from 16
// peers: stage 04 takes at most 8 connections from one (MaxConnectionsPerSource=).
func peers() *http.Client {
	c, n := client(0), atomic.Uint32{}
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network,
		addr string) (net.Conn, error) {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n.Add(1)%16))}
		return (&net.Dialer{LocalAddr: src}).DialContext(ctx, network, addr)
	}
	return c
}

// roll sends GET /roll to port and reads the response; anything but a 200 is an error.
func roll(c *http.Client, port int) error {
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/roll")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

// hammer sends GET /roll to port with c from clients goroutines for d.
func hammer(c *http.Client, port int, d time.Duration) (total sample) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				err := roll(c, port)
				mu.Lock()
				total.add(result(err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total.elapsed = time.Since(start)
	return total
}

// sample is what measuring a target gave: successes (with their times, for cold
// starts), failures and the first error, and the time it took.
type sample struct {
	ok, failed int
	elapsed    time.Duration
	times      []time.Duration
	err        error
}

// result is one request's sample, without its time.
func result(err error) sample {
	if err != nil {
		return sample{failed: 1, err: err}
	}
	return sample{ok: 1}
}

func (s *sample) add(o sample) {
	s.ok, s.failed, s.elapsed = s.ok+o.ok, s.failed+o.failed, s.elapsed+o.elapsed
	s.times = append(s.times, o.times...)
	if s.err == nil {
		s.err = o.err
	}
}

func (s sample) rate() float64 { return float64(s.ok) / s.elapsed.Seconds() }

// p is the nearest-rank percentile of the times.
func (s sample) p(percent int) time.Duration {
	if len(s.times) == 0 {
		return 0
	}
	return slices.Sorted(slices.Values(s.times))[(len(s.times)*percent+99)/100-1]
}
