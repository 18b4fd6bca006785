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
// Benchmarks need a quiet machine: run it when `uptime` shows a low load.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"example.com/socket-dice/internal/systemdtest"
)

// python is Debian's, not one on PATH (pyenv, a venv) that may lack python3-flask.
const python = "/usr/bin/python3"

// config is one run's settings; -quick makes everything small.
type config struct {
	quick, measure                    bool
	out                               string
	port                              int
	starts, rounds, requests, clients int           // cold starts, load rounds, RSS requests
	warmDur, connDur, idle            time.Duration // per round, per target; 03's -idle
}

func main() {
	c := config{starts: 30, rounds: 3, requests: 1000, clients: 16, warmDur: 3 * time.Second,
		connDur: 10 * time.Second, idle: 100 * time.Millisecond}
	flag.BoolVar(&c.quick, "quick", false, "smoke run: few iterations, output to a temp dir")
	flag.BoolVar(&c.measure, "measure", false, "only the RSS table, as Markdown on stdout")
	flag.StringVar(&c.out, "out", "docs", "directory for bench.md, bench.svg, bench-day.svg")
	flag.IntVar(&c.port, "port", 18100, "first of the ports used on 127.0.0.1 (up to +63)")
	flag.Parse()
	if c.measure {
		c.idle = 2 * time.Second
	}
	if c.quick {
		c.starts, c.rounds, c.requests, c.warmDur, c.connDur = 3, 1, 100, 500*time.Millisecond,
			time.Second
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) }

func run(c config) error {
	top, err := os.Getwd()
	if _, statErr := os.Stat(filepath.Join(top, "go.mod")); err != nil || statErr != nil {
		return fmt.Errorf("run bench from the repository's top directory (make bench)")
	}
	if exec.Command(python, "-c", "import flask").Run() != nil {
		return fmt.Errorf("Debian's python3-flask is missing: apt-get install python3-flask")
	}
	// The binaries and the managers' state, in a directory that services may read
	// and whose path is short: a manager's socket path must fit in 108 bytes.
	tmp, err := os.MkdirTemp("", "dice-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	r := &report{config: c, started: time.Now(), load0: loadavg(), tmp: tmp,
		targets: map[string]*target{}, idles: map[string]time.Duration{}}
	for _, stage := range []string{"03-idle-exit", "05-socket-proxyd"} {
		r.idles[stage] = committedIdle(top, stage)
	}
	if err := errors.Join(os.Chmod(tmp, 0o755), build(top, tmp, c)); err != nil {
		return err
	}
	add := func(key, label, stage, binDir, dropIn string) *target {
		r.targets[key] = &target{key: key, label: label, stage: stage, dropIn: dropIn,
			binDir: filepath.Join(tmp, binDir), port: c.port + len(r.targets)}
		return r.targets[key]
	}
	// Timing cold starts stops 02's service 30 times in a row: the default start limit
	// (5 starts in 10 s) would fail it after 5. 03's units size their own.
	noLimit := "# bench: stopped and started 30 times.\n[Unit]\nStartLimitIntervalSec=0\n"
	add("01", "01-always-on", "01-always-on", "bin", "")
	add("02", "02-socket-activated", "02-socket-activated", "bin", noLimit)
	add("03", "03-idle-exit", "03-idle-exit", "bin", "")
	add("04", "04-accept-yes", "04-accept-yes", "bin", "")
	add("05", "05-socket-proxyd", "05-socket-proxyd", "bin", "")
	add("05f", "05, Flask backend", "05-socket-proxyd", "bin", "").python = true
	// The post's next step: its dice.py on fd 3, under stage 02's units (flask/activated.py).
	add("fs", "Flask, socket-activated", "02-socket-activated", "bin", noLimit+"[Service]\n"+
		"Environment=PYTHONPATH="+top+"/05-socket-proxyd PYTHONDONTWRITEBYTECODE=1\nExecStart=\n"+
		"ExecStart="+python+" "+top+"/internal/bench/flask/activated.py\n").python = true
	add("flask", "Flask, always on", "", "", "").python = true
	if !c.measure {
		add("04g", "04, GOMAXPROCS=1", "04-accept-yes", "bin",
			"# bench: a variant.\n[Service]\nEnvironment=GOMAXPROCS=1\n")
		add("f02", "floor, 02's units", "02-socket-activated", "floor", noLimit)
		add("f03", "floor, 03's units", "03-idle-exit", "floor", "")
		add("f04", "floor, 04's units", "04-accept-yes", "floor", "")
		if _, err := os.Stat(filepath.Join(tmp, "cfloor", "04-accept-yes")); err == nil {
			add("c04", "C floor, 04's units", "04-accept-yes", "cfloor", "")
		}
	}
	// Every manager stops at the end, and on Ctrl-C (once all are started).
	defer stopAll(r.targets)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	for _, t := range r.targets {
		if err := t.install(top, filepath.Join(tmp, t.key), c.idle); err != nil {
			return fmt.Errorf("%s: %w", t.label, err)
		}
	}
	go func() {
		<-sig
		stopAll(r.targets)
		os.RemoveAll(tmp)
		os.Exit(1)
	}()
	return r.measureAll()
}

// build builds the stages into tmp/bin/ as `make build` does. InstallStage runs
// <dir>/<stage>: the Go floor goes to tmp/floor/, the C floor (given a C compiler) to
// tmp/cfloor/, under the names of the stages they stand in for.
func build(top, tmp string, c config) error {
	gobuild := func(out string, pkgs ...string) error {
		return command("go", append([]string{"build", "-buildvcs=false", "-trimpath",
			"-ldflags=-s -w", "-o", out}, pkgs...)...)
	}
	err := gobuild(tmp+"/bin/", "./01-always-on", "./02-socket-activated", "./03-idle-exit",
		"./04-accept-yes")
	for _, stage := range []string{"02-socket-activated", "03-idle-exit", "04-accept-yes"} {
		if err == nil && !c.measure {
			err = gobuild(filepath.Join(tmp, "floor", stage), "./internal/bench/floor")
		}
	}
	if err = errors.Join(err, os.Mkdir(tmp+"/cfloor", 0o755)); err != nil || c.measure {
		return err
	}
	if err := command("cc", "-static", "-O2", "-o", tmp+"/cfloor/04-accept-yes",
		filepath.Join(top, "internal", "bench", "cfloor", "floor.c")); err != nil {
		logf("no C floor (it needs a C compiler and a static libc: apt-get install gcc): %v", err)
	}
	return nil
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

func field(s string, i int) string {
	if f := strings.Fields(s); len(f) > i {
		return f[i]
	}
	return "?"
}

func loadavg() string { return output("cut", "-d", " ", "-f", "1-3", "/proc/loadavg") }

// target is one thing measured: a stage, a floor or Flask, in a private systemd user
// manager of its own, listening on its own port.
type target struct {
	key, label string
	stage      string // the units in units/<stage>; "" for Flask
	binDir     string // ExecStart= runs binDir/<stage>
	dropIn     string // what this run changes, besides binary, port and -idle
	port       int
	python     bool // the app is the blog's dice.py (05f: behind the proxy)
	m          *systemdtest.Manager
}

func (t *target) socketActivated() bool { return t.stage != "" && t.stage != "01-always-on" }

// exits tells whether the service exits by itself: 03 and 05 when idle, 04 when done.
func (t *target) exits() bool {
	return t.stage == "03-idle-exit" || t.stage == "04-accept-yes" || t.stage == "05-socket-proxyd"
}

func (t *target) service() string {
	names := map[string]string{"": "dice-flask.service", "04-accept-yes": "dice@.service",
		"05-socket-proxyd": "dice-proxy.service"}
	if name, ok := names[t.stage]; ok {
		return name
	}
	return "dice.service"
}

// install starts the target's manager and puts its units in place, as committed plus
// drop-ins (binary, port, 03's -idle, 05's ports and idle time, t.dropIn), and starts
// the socket. Always-on Flask is not a stage: its unit is copied, and a drop-in runs
// this checkout's dice.py (05-socket-proxyd/, the post's) on our port.
func (t *target) install(top, state string, idle time.Duration) (err error) {
	if t.m, err = systemdtest.Start(top, state); err != nil {
		return err
	}
	addr, app := "127.0.0.1:"+strconv.Itoa(t.port), t.port+50 // 05: the app's private port
	switch t.stage {
	case "":
		err = command("install", "-Dm644", filepath.Join(top, "internal", "bench", "flask",
			t.service()), filepath.Join(t.m.RuntimeDir(), "systemd", "user", t.service()))
		t.dropIn = fmt.Sprintf("# bench: this checkout's dice.py, another port.\n[Service]\n"+
			"ExecStart=\nExecStart=%s -m flask --app %s/05-socket-proxyd/dice.py run "+
			"--host 127.0.0.1 --port %d\n", python, top, t.port)
	case "05-socket-proxyd":
		// run-stage writes the app's drop-in (stage 01 or, with DICE_BACKEND=flask, the
		// post's dice.py) from the environment, which InstallStage passes on.
		if err = os.Setenv("DICE_BACKEND", map[bool]string{true: "flask"}[t.python]); err == nil {
			err = t.m.InstallStage(t.stage, t.binDir, addr)
		}
		if err == nil {
			err = t.m.DropIn("dice-backend.service", dropInName, fmt.Sprintf(
				"# bench: another port.\n[Service]\nEnvironment=PORT=%d\n", app))
		}
		// At least 1 s: Flask closes its connection after each response, and the proxy's
		// idle time runs between two connections (100 ms could end it between requests).
		t.dropIn = fmt.Sprintf("# bench: another idle time and port.\n[Service]\nExecStart=\n"+
			"ExecStart=/usr/lib/systemd/systemd-socket-proxyd --exit-idle-time=%s 127.0.0.1:%d\n",
			max(idle, time.Second), app)
	case "01-always-on":
		err = t.m.InstallStage(t.stage, t.binDir, "", "-addr", addr)
	case "03-idle-exit":
		err = t.m.InstallStage(t.stage, t.binDir, addr, "-idle", idle.String())
	default:
		err = t.m.InstallStage(t.stage, t.binDir, addr)
	}
	if err == nil && t.dropIn != "" {
		err = t.m.DropIn(t.service(), dropInName, t.dropIn)
	}
	if err == nil && t.socketActivated() {
		err = t.systemctl("start", "dice.socket")
	}
	return err
}

// dropInName sorts after run-stage.conf, whose ExecStart= a drop-in of ours may replace:
// systemd applies drop-ins in the order of their names.
const dropInName = "zz-bench"

// stopAll stops the targets' managers, with their units and processes.
func stopAll(targets map[string]*target) {
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
	if err := t.systemctl("start", t.service()); err != nil {
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
	return t.systemctl("stop", t.service())
}

func (t *target) prop(unit, prop string) string {
	value, _ := t.m.Prop(unit, prop)
	return value
}

// idle tells whether no process of the target runs.
func (t *target) idle() bool { return t.rss().procs == 0 }

// listening tells whether the target's socket still listens.
func (t *target) listening() bool { return t.prop("dice.socket", "SubState") == "listening" }

// rss is the target's processes (the main process of each dice service: 04's
// instances, 05's proxy and app) and their RSS: VmRSS of /proc/<pid>/status, what
// `ps -o rss=` shows.
func (t *target) rss() (r rss) {
	for _, pid := range strings.Fields(t.prop("dice*.service", "MainPID")) {
		status, err := os.ReadFile("/proc/" + pid + "/status")
		if _, value, ok := strings.Cut(string(status), "VmRSS:"); err == nil && ok {
			kib, _ := strconv.Atoi(field(value, 0))
			r.procs, r.kib = r.procs+1, r.kib+kib
		}
	}
	return r
}

// waitFor polls cond every millisecond until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
	}
	return nil
}
