// Command bench measures the five stages side by side under a real systemd, with the
// blog post's Flask app and with floors (floor/, cfloor/), each in a private user manager
// of its own (internal/systemdtest); docs/bench.md says how.
//
//	go run ./internal/bench            the full run (minutes): docs/bench.md, bench*.svg
//	go run ./internal/bench -quick     a smoke run (< 1 min), into a temporary directory
//	go run ./internal/bench -measure   only the RSS table, on stdout (make measure)
//
// Run it from the repository's top directory, on a quiet machine (a low `uptime`).
package main

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/template"
	"time"

	"socket-dice/internal/systemdtest"
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
	targets = map[string]*target{}
)

// The targets of each table and chart, in their order.
var (
	rssKeys  = []string{"01", "02", "03", "04", "05", "05f", "fs", "flask"}
	coldKeys = []string{"02", "03", "04", "05", "05f", "fs", "f02", "f03", "f04", "c04", "flask"}
	warmKeys = []string{"01", "02", "03", "05", "05f", "fs", "flask"}
	connKeys = []string{"04", "f04", "c04"}
)

//go:embed report.tmpl
var measureTemplate string

// region is a generated part of docs/bench.md, <!-- bench:name -->…<!-- /bench -->, its
// markers on lines of their own (a table, a paragraph) or within a sentence (a figure).
var region = regexp.MustCompile(`(?s)(<!-- bench:([a-z0-9]+) -->\n?).*?(\n?<!-- /bench -->)`)

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
		if _, err := fill(); err != nil { // a region bench.md lacks: fail before the load
			return err
		}
		measureLoads()
	}
	return write()
}

// build builds the stages into tmp/bin/ as `make build` does; the Go floor into
// tmp/floor/ and the C floor (given a C compiler) into tmp/cfloor/, named after the
// stages whose units run them.
func build() error {
	gobuild := []string{"build", "-buildvcs=false", "-trimpath", "-ldflags=-s -w", "-o"}
	err := command("go", append(gobuild, tmp+"/bin/", "./01-always-on",
		"./02-socket-activated", "./03-idle-exit", "./04-accept-yes")...)
	for _, stage := range []string{"02-socket-activated", "03-idle-exit", "04-accept-yes"} {
		if err == nil && !*measure {
			err = command("go", append(gobuild, tmp+"/floor/"+stage, "./internal/bench/floor")...)
		}
	}
	if err == nil && !*measure {
		os.Mkdir(tmp+"/cfloor", 0o755)
		if err := command("cc", "-static", "-O2", "-o", tmp+"/cfloor/04-accept-yes",
			"internal/bench/cfloor/floor.c"); err != nil {
			logf("no C floor (it needs a C compiler and a static libc: apt-get install gcc)")
		}
	}
	return err
}

// addTargets adds what is measured, each on a port of its own from 18100. -measure
// leaves out the floors; the C floor is left out where it could not be built.
func addTargets() {
	add := func(key, label, stage, dir string, dropIns ...string) *target {
		t := &target{key: key, label: label, stage: stage, dir: dir, dropIns: dropIns,
			port: 18100 + len(targets)}
		targets[key] = t
		return t
	}
	// Timing cold starts stops 02's service 30 times in a row: the default start limit
	// (5 starts in 10 s) would fail it after 5. 03's units size their own.
	noLimit := "# bench: stopped and started 30 times.\n[Unit]\nStartLimitIntervalSec=0\n"
	add("01", "01-always-on", "01-always-on", "bin")
	add("02", "02-socket-activated", "02-socket-activated", "bin", "dice.service", noLimit)
	add("03", "03-idle-exit", "03-idle-exit", "bin")
	add("04", "04-accept-yes", "04-accept-yes", "bin")
	// 05 with stage 01's program behind the proxy, and with the post's dice.py; the
	// proxy's idle time is at least 1 s (docs/bench.md says why).
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
		if t := targets[k]; t != nil {
			ts = append(ts, t)
		}
	}
	return ts
}

// get is the target key, or an empty one (nothing measured) if there is none.
func get(key string) *target { return cmp.Or(targets[key], &target{}) }

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

// services are the services that start and stop act on, by stage: the other stages
// are started by their socket and exit by themselves.
var services = map[string]string{"": "dice-flask.service", "01-always-on": "dice.service",
	"02-socket-activated": "dice.service"}

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

// memory is the target's processes, the main process of each dice service (04's
// instances, 05's proxy and app), and their RSS: VmRSS, what `ps -o rss=` shows.
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
	return errors.Join(err, t.stop())
}

// measureLoads times cold starts, warm throughput and stage 04's connections per
// second, in alternating rounds: each round measures every target of its table once.
func measureLoads() {
	alternate("cold starts", starts, coldKeys, func(t *target) *sample { return &t.cold },
		func(t *target) sample {
			// Always-on Flask's time runs from `systemctl start` (t.start) to its response.
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
			if !t.listening() {
				s.add(result(fmt.Errorf("dice.socket no longer listens after the load")))
			}
			return s
		})
}

func (t *target) listening() bool {
	state, _ := t.m.Prop("dice.socket", "SubState")
	return state == "listening"
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
	s.times, s.err = append(s.times, o.times...), cmp.Or(s.err, o.err)
}

func (s sample) rate() float64 { return float64(s.ok) / s.elapsed.Seconds() }

// p is the nearest-rank percentile of the times.
func (s sample) p(percent int) time.Duration {
	if len(s.times) == 0 {
		return 0
	}
	return slices.Sorted(slices.Values(s.times))[(len(s.times)*percent+99)/100-1]
}

// write prints the RSS table (-measure), or writes bench.md (docs/bench.md, regions
// filled), bench.svg and bench-day.svg into docs/ (-quick: a new temporary directory).
func write() (err error) {
	if *measure {
		return template.Must(template.New("").Parse(measureTemplate)).Execute(os.Stdout, figures())
	}
	md, err := fill()
	dir := "docs"
	if err == nil && *quick {
		dir, err = os.MkdirTemp("", "dice-bench-out-")
	}
	logf("the run took %s; writing bench.md, bench.svg and bench-day.svg in %s",
		time.Since(started).Round(time.Second), dir)
	day := func(title string, calls int) panel {
		return panel{title + " calls a day", " MiB·h", rssKeys,
			func(t *target) float64 { return mibh(t, calls) }}
	}
	for name, text := range map[string]string{"bench.md": md,
		"bench.svg": svg(fmt.Sprintf("socket-dice: memory and cold start (%s, %d CPUs, %s)",
			started.UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version()),
			panel{fmt.Sprintf("RSS after %d requests", requests), " MiB", rssKeys,
				func(t *target) float64 { return float64(t.rss[2].kib) / 1024 }},
			panel{"Cold first response, p50", " ms", coldKeys,
				func(t *target) float64 { return float64(t.cold.p(50)) / 1e6 }}),
		"bench-day.svg": svg("Memory × time a day, calls spread over the day (MiB·h)",
			day("10", 10), day("1,000", 1000)),
	} {
		if err == nil {
			err = os.WriteFile(dir+"/"+name, []byte(text), 0o644)
		}
	}
	return err
}

// fill is docs/bench.md with each region's content replaced by the figure of its
// name; it fails if a figure has no region there.
func fill() (string, error) {
	md, err := os.ReadFile("docs/bench.md")
	values := figures()
	missing := maps.Clone(values)
	out := region.ReplaceAllStringFunc(string(md), func(r string) string {
		m := region.FindStringSubmatch(r)
		if value, ok := values[m[2]]; ok {
			delete(missing, m[2])
			return m[1] + strings.TrimSuffix(value, "\n") + m[3]
		}
		return r // not a figure: left as it is
	})
	if err == nil && len(missing) > 0 {
		err = fmt.Errorf("docs/bench.md has no region <!-- bench:NAME -->…<!-- /bench --> "+
			"for %s: the run would leave these figures out", slices.Sorted(maps.Keys(missing)))
	}
	return out, err
}

// figures are what bench.md shows between markers, by name, and -measure's template
// some of them: the machine, the run's settings, the tables.
func figures() map[string]string {
	var sizes []string
	for _, path := range []string{"bin/01-always-on", "bin/02-socket-activated",
		"bin/03-idle-exit", "bin/04-accept-yes", "floor/04-accept-yes", "cfloor/04-accept-yes"} {
		if fi, err := os.Stat(tmp + "/" + path); err == nil {
			sizes = append(sizes, fmt.Sprintf("%s %.1f MB", path, float64(fi.Size())/1e6))
		}
	}
	return map[string]string{
		"kind": map[bool]string{false: "full run",
			true: "**a quick smoke run: numbers not meaningful**"}[*quick],
		"date":   started.UTC().Format("2006-01-02 15:04 UTC"),
		"cpus":   fmt.Sprint(runtime.NumCPU()),
		"cpu":    output("sh", "-c", "grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-"),
		"kernel": output("uname", "-r"), "go": runtime.Version(),
		"systemd": strings.Fields(output("systemctl", "--version") + " ? ?")[1],
		"flask": output(python, "-c", "import sys, importlib.metadata as m; "+
			"print(m.version('flask'), '(Python', sys.version.split()[0]+')')"),
		"load0": load0, "load1": loadavg(), "took": time.Since(started).Round(time.Second).String(),
		"build": "`CGO_ENABLED=" + output("go", "env", "CGO_ENABLED") +
			" go build -trimpath -ldflags='-s -w'`",
		"sizes": strings.Join(sizes, ", "),
		"idle":  idle.String(), "requests": fmt.Sprint(requests), "starts": fmt.Sprint(starts),
		"rounds": fmt.Sprint(rounds), "clients": fmt.Sprint(clients),
		"warmtime": warmDur.String(), "conntime": connDur.String(),
		"idle03": span(committedIdle("03-idle-exit")),
		"idle05": span(committedIdle("05-socket-proxyd")),
		"goals":  table("| goal | measured | |", nil, nil, goals()...),
		"rss": table(fmt.Sprintf("| stage | started, no request yet | after the 1st request "+
			"| after %d requests | connection closed, %s later |", requests, idle),
			rssKeys, func(t *target) []string {
				return []string{t.rss[0].String(), t.rss[1].String(), t.rss[2].String(),
					t.rss[3].String()}
			}),
		"cold": table("| | p50 | p95 | n | failed |", coldKeys, func(t *target) []string {
			return []string{ms(t.cold.p(50)), ms(t.cold.p(95)), fmt.Sprint(len(t.cold.times)),
				failures(t.cold)}
		}),
		"warm": table("| | requests/s | ratio to 01 | to 02 | failed |", warmKeys,
			func(t *target) []string {
				return []string{fmt.Sprintf("%.0f", t.warm.rate()), ratio(t.warm, get("01").warm),
					ratio(t.warm, get("02").warm), failures(t.warm)}
			}),
		"conn": table("| | connections/s | failed | ratio to the Go floor | to the C floor |",
			connKeys, func(t *target) []string {
				return []string{fmt.Sprintf("%.0f", t.conn.rate()), failures(t.conn),
					ratio(t.conn, get("f04").conn), ratio(t.conn, get("c04").conn)}
			}),
		"day": table("| | active a day, 10 calls | MiB·h | active a day, 1,000 calls | MiB·h |",
			rssKeys, func(t *target) []string {
				return []string{span(active(t, 10)), num(mibh(t, 10)), span(active(t, 1000)),
					num(mibh(t, 1000))}
			}),
	}
}

// table is a Markdown table: header, rows, then a row per target of keys there is
// (its label, then cells(t)).
func table(header string, keys []string, cells func(*target) []string,
	rows ...[]string) string {
	for _, t := range pick(keys...) {
		rows = append(rows, append([]string{t.label}, cells(t)...))
	}
	s := header + "\n" + strings.Repeat("|---", strings.Count(header, "|")-1) + "|\n"
	for _, cells := range rows {
		s += "| " + strings.Join(cells, " | ") + " |\n"
	}
	return s
}

// goals are the project's goals, each as goal, measured figures, verdict.
func goals() (g [][]string) {
	add := func(goal string, met bool, format string, args ...any) {
		g = append(g, []string{goal, fmt.Sprintf(format, args...),
			map[bool]string{true: "**met**", false: "**missed**"}[met]})
	}
	idle := 0
	for _, t := range pick("02", "03", "04", "05", "05f") {
		idle += t.rss[0].procs + map[bool]int{true: t.rss[3].procs}[t.exits()]
	}
	add("P1 stages 02–05 idle: no process, 0 KiB", idle == 0, "%d processes before the first "+
		"request (02–05) and after idle or close (03–05)", idle)
	goMax, flask := 0, get("flask").rss[2].kib
	for _, t := range pick("01", "02", "03", "04") {
		goMax = max(goMax, t.rss[1].kib, t.rss[2].kib)
	}
	add("P1 Go active RSS ≤ 0.25× Flask's", goMax*4 <= flask, "largest Go stage %d KiB / Flask "+
		"%d KiB (after %d requests) = %.2f×", goMax, flask, requests, float64(goMax)/float64(flask))
	fl := get("fs").cold.p(50) // Flask timed as the stages are, from the client's connect
	for _, k := range []string{"02", "03", "04"} {
		s, f := get(k).cold, get("f"+k).cold.p(50)
		x, y := float64(s.p(50))/float64(f), float64(s.p(50))/float64(fl)
		add("P2 "+k+" cold ≤ 1.5× floor, ≤ 0.1× socket-activated Flask",
			x <= 1.5 && y <= 0.1 && s.failed == 0,
			"p50 %s vs floor %s = %.2f×; vs Flask %s = %.3f×", ms(s.p(50)), ms(f), x, ms(fl), y)
	}
	base := get("01").warm
	for _, k := range []string{"02", "03"} {
		w := get(k).warm
		add("P3 warm throughput "+k+"/01 ≥ 0.95", w.rate() >= 0.95*base.rate() && w.failed == 0,
			"%.0f / %.0f req/s = %.2f", w.rate(), base.rate(), w.rate()/base.rate())
	}
	s, f, c := get("04").conn, get("f04").conn, get("c04").conn
	add("P4 stage 04 ≥ 0.9× the Go floor's connections/s, 0 failures",
		s.rate() >= 0.9*f.rate() && s.failed == 0,
		"%.0f / %.0f conn/s = %.2f×, %d failed", s.rate(), f.rate(), s.rate()/f.rate(), s.failed)
	if c.ok > 0 {
		add("P4 stage 04 ≥ 0.85× the C floor's connections/s", s.rate() >= 0.85*c.rate(),
			"%.0f / %.0f conn/s = %.2f×", s.rate(), c.rate(), s.rate()/c.rate())
	}
	re, listening := get("03").cold, get("03").listening()
	add("P5 stage 03 re-activated after every idle exit, 0 failures", re.failed == 0 &&
		listening, "%d of %d cold starts answered, each by a new process; socket listening: %v",
		re.ok, re.ok+re.failed, listening)
	return g
}

// active is how long t's processes run in a day of calls spread evenly over 24 h, as
// docs/bench.md's "What it saves in a day" says.
func active(t *target, calls int) time.Duration {
	if !t.exits() {
		return 24 * time.Hour
	}
	gap := 24 * time.Hour / time.Duration(calls)
	return time.Duration(calls) * min(gap, t.cold.p(50)+committedIdle(t.stage))
}

// mibh is memory × time, in MiB·h, that t holds in such a day: with its RSS after
// the 1st request, but for more than 10 calls after n requests if it stays.
func mibh(t *target, calls int) float64 {
	phase := 1
	if calls > 10 && !t.exits() {
		phase = 2
	}
	return float64(t.rss[phase].kib) / 1024 * active(t, calls).Hours()
}

// committedIdle is the idle time in the committed ExecStart= of stage: 03's -idle,
// 05's proxy's --exit-idle-time; 0 if none.
func committedIdle(stage string) time.Duration {
	units, _ := exec.Command("sh", "-c", "cat units/"+stage+"/*.service").Output()
	idleFlag := regexp.MustCompile(`(?m)^ExecStart=.*(?:-idle |--exit-idle-time=)(\S+)`)
	if m := idleFlag.FindSubmatch(units); m != nil {
		d, _ := time.ParseDuration(string(m[1]))
		return d
	}
	return 0
}

// panel is one bar chart of an image: a bar per target of keys there is, value(t) long.
type panel struct {
	title, unit string
	keys        []string
	value       func(*target) float64
}

// svg is an image of panels side by side, as tall as the longest; Flask's bars orange.
func svg(title string, panels ...panel) string {
	bars, s := 0, ""
	for i, p := range panels {
		longest := 0.0
		for _, t := range pick(p.keys...) {
			longest = max(longest, p.value(t))
		}
		s += fmt.Sprintf(`<g transform="translate(%d 0)"><text y="52" font-weight="bold">%s`+
			"</text>\n", 10+470*i, p.title)
		for j, t := range pick(p.keys...) {
			width := p.value(t) / longest * 200
			s += fmt.Sprintf(`<g transform="translate(0 %d)"><text x="180" y="13" `+
				`text-anchor="end">%s</text><rect x="185" width="%.1f" height="18" fill="%s"/>`+
				`<text x="189" dx="%.1f" y="13">%s%s</text></g>`+"\n", 64+26*j, t.label, width,
				map[bool]string{false: "#4292c6", true: "#fd8d3c"}[t.flask], width,
				num(p.value(t)), p.unit)
			bars = max(bars, j+1)
		}
		s += "</g>\n"
	}
	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="940" height="%d" `+
		`font-family="sans-serif" font-size="12">`+"\n"+`<rect width="100%%" height="100%%" `+
		`fill="white"/>`+"\n"+`<text x="10" y="22" font-size="15" font-weight="bold">%s</text>`+
		"\n%s</svg>\n", 74+26*bars, title, s)
}

// rss is the memory of a target at one moment: its processes and their RSS in KiB.
type rss struct{ procs, kib int }

func (r rss) String() string {
	if r.procs == 0 {
		return "no process, 0 KiB"
	}
	return fmt.Sprintf("%d process%s, %d KiB", r.procs, map[bool]string{true: "es"}[r.procs > 1],
		r.kib)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// num is v with 3 significant digits, without an exponent: 31.6, 0.0000833, 1234.
func num(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.0f", v)
	}
	f, _ := strconv.ParseFloat(fmt.Sprintf("%.3g", v), 64)
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// span is d in the unit a reader would say it in: 24 h, 5.1 min, 0.52 s.
func span(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return num(d.Hours()) + " h"
	case d >= time.Minute:
		return num(d.Minutes()) + " min"
	}
	return num(d.Seconds()) + " s"
}

// failures is the count of failures and the first error.
func failures(s sample) string {
	if s.err == nil {
		return fmt.Sprint(s.failed)
	}
	return fmt.Sprintf("%d (first error: %v)", s.failed, s.err)
}

// ratio is a's rate to b's, "–" when b was not measured.
func ratio(a, b sample) string {
	if b.ok == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a.rate()/b.rate())
}
