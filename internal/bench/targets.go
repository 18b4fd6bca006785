package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"socket-dice/internal/systemdtest"
)

// python is Debian's, with python3-flask; not a venv's on PATH.
const python = "/usr/bin/python3"

// target is one thing measured (a stage, a floor or Flask) in a systemd user manager
// of its own, and what was measured of it.
type target struct {
	key, label string
	stage      string   // its units: units/<stage>/; "" for always-on Flask
	bin        string   // the directory in tmp of the programs its units run: bin, floor, cfloor
	backend    string   // stage 05's app: "" (stage 01's program) or "flask"
	args       []string // appended to the committed ExecStart= of its program (03's -idle)
	dropIns    []string // unit, content, ...: what the run changes besides binary and port
	exits      bool     // its service exits by itself: when idle (03, 05), after its request (04)
	flask      bool     // the app is the post's dice.py: orange in the charts
	in         []string // the tables it is a row of: rss, cold, warm, conn (report.go)
	unix       string   // requests go to this unix socket, below XDG_RUNTIME_DIR, not TCP

	port  int
	entry []string // the units that start it (scripts/run-stage --units)
	m     *systemdtest.Manager

	rss              [4]rss // started, after the 1st request, after n, connection closed
	cold, warm, conn sample
}

// addTargets adds what is measured, each on a port of its own from 18100, in the order
// of the tables' rows. -measure leaves out the floors; without Flask, its rows go.
//
// A new stage adds its rows here: one add(...) per row, naming the tables it is in
// ("rss", "cold", "warm", "conn", or a new one added in report.go's tables and
// measured in load.go's measureLoads). Its units come from units/<stage>/ as
// scripts/run-stage installs them; dropIns and args change what a run needs; exits
// says whether its service ends by itself.
func addTargets() {
	add := func(t target) *target {
		if t.flask && !flaskOK || *measure && (t.bin == "floor" || t.bin == "cfloor") {
			return &t
		}
		t.port = 18100 + len(targets)
		targets = append(targets, &t)
		return &t
	}
	all, coldConn := []string{"rss", "cold", "warm"}, []string{"cold", "conn"}
	// Timing cold starts stops 02's service 30 times in a row: the default start limit
	// (5 starts in 10 s) would fail it after 5. 03's units size their own.
	noLimit := "# bench: stopped and started 30 times.\n[Unit]\nStartLimitIntervalSec=0\n"
	add(target{key: "01", label: "01-always-on", stage: "01-always-on", bin: "bin",
		in: []string{"rss", "warm"}})
	add(target{key: "02", label: "02-socket-activated", stage: "02-socket-activated",
		bin: "bin", in: all, dropIns: []string{"dice.service", noLimit}})
	add(target{key: "03", label: "03-idle-exit", stage: "03-idle-exit", bin: "bin", in: all,
		exits: true, args: []string{"-idle", idle.String()}})
	add(target{key: "04", label: "04-accept-yes", stage: "04-accept-yes", bin: "bin",
		exits: true, in: []string{"rss", "cold", "conn"}})
	// 05 with stage 01's program behind the proxy, and with the post's dice.py; the
	// proxy's idle time is at least 1 s (docs/bench.md says why).
	for _, backend := range []string{"", "flask"} {
		app, key, label := 18150+len(targets), "05", "05-socket-proxyd"
		if backend == "flask" {
			key, label = "05f", "05, Flask backend"
		}
		add(target{key: key, label: label, stage: "05-socket-proxyd", bin: "bin",
			backend: backend, flask: backend == "flask", exits: true, in: all,
			dropIns: []string{"dice-proxy.service", fmt.Sprintf("# bench: another idle time "+
				"and port.\n[Service]\nExecStart=\nExecStart=/usr/lib/systemd/"+
				"systemd-socket-proxyd --exit-idle-time=%s 127.0.0.1:%d\n",
				max(idle, time.Second), app),
				"dice-backend.service", fmt.Sprintf("# bench: another port.\n[Service]\n"+
					"Environment=PORT=%d\n", app)}})
	}
	// The post's next step: its dice.py on fd 3 (flask/activated.py), under 02's units.
	add(target{key: "fs", label: "Flask, socket-activated", stage: "02-socket-activated",
		bin: "bin", flask: true, in: all, dropIns: []string{"dice.service", noLimit +
			"[Service]\nEnvironment=PYTHONPATH=" + top + "/05-socket-proxyd " +
			"PYTHONDONTWRITEBYTECODE=1\nExecStart=\nExecStart=" + python + " " + top +
			"/internal/bench/flask/activated.py\n"}})
	add(target{key: "f02", label: "floor, 02's units", stage: "02-socket-activated",
		bin: "floor", in: []string{"cold"}, dropIns: []string{"dice.service", noLimit}})
	add(target{key: "f03", label: "floor, 03's units", stage: "03-idle-exit", bin: "floor",
		exits: true, in: []string{"cold"}})
	add(target{key: "f04", label: "floor, 04's units", stage: "04-accept-yes", bin: "floor",
		exits: true, in: coldConn})
	add(target{key: "c04", label: "C floor, 04's units", stage: "04-accept-yes",
		bin: "cfloor", exits: true, in: coldConn})
	// Not a stage: flask/dice-flask.service as it is, run on this checkout's dice.py.
	add(target{key: "flask", label: "Flask, always on", flask: true, in: all,
		dropIns: []string{"dice-flask.service", fmt.Sprintf("# bench: this checkout's "+
			"dice.py, another port.\n[Service]\nExecStart=\nExecStart=%s -m flask --app "+
			"%s/05-socket-proxyd/dice.py run --host 127.0.0.1 --port %d\n", python, top,
			18100+len(targets))}})
}

// flaskOK tells whether the post's Flask app can run here: Debian's python3 with Flask.
var flaskOK = exec.Command(python, "-c", "import flask").Run() == nil

// get is the target key, or an empty one (nothing measured) if there is none.
func get(key string) *target {
	for _, t := range targets {
		if t.key == key {
			return t
		}
	}
	return &target{}
}

// rows are the targets that are rows of table, in order.
func rows(table string) (ts []*target) {
	for _, t := range targets {
		if slices.Contains(t.in, table) {
			ts = append(ts, t)
		}
	}
	return ts
}

// build builds the programs the targets' units run, into tmp/<bin>/: the stages with
// `make build`, the Go floor with it too (under the names of the stages it replaces),
// the C floor with cc where there is one (else its rows go).
func build() error {
	programs := map[string][]string{}
	for _, t := range targets {
		if t.stage != "" {
			p, err := systemdtest.Programs(top, t.stage)
			if err != nil {
				return err
			}
			programs[t.bin] = append(programs[t.bin], p...)
		}
	}
	for bin, p := range programs {
		slices.Sort(p)
		p, dir := slices.Compact(p), tmp+"/"+bin
		switch bin {
		case "cfloor":
			for _, name := range p {
				err := errors.Join(os.MkdirAll(dir, 0o755), command("cc", "-static", "-O2",
					"-o", dir+"/"+name, "internal/bench/cfloor/floor.c"))
				if err != nil {
					logf("no C floor (it needs a C compiler and a static libc: apt-get install gcc)")
					targets = slices.DeleteFunc(targets, func(t *target) bool { return t.bin == bin })
				}
			}
		case "floor":
			if err := makeBuild(dir, "internal/bench/floor", p); err != nil {
				return err
			}
		default:
			if err := makeBuild(dir, "", p); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildCommand is the command make build ran, as its output shows it.
var buildCommand string

// makeBuild runs `make build` for programs into dir, with package pkg if not empty.
func makeBuild(dir, pkg string, programs []string) error {
	out, err := exec.Command("make", "-s", "build", "BIN="+dir, "PKG="+pkg,
		"PROGRAMS="+strings.Join(programs, " ")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("make build: %w\n%s", err, out)
	}
	logf("%s", strings.TrimSpace(string(out)))
	if pkg == "" {
		buildCommand, _, _ = strings.Cut(string(out), " -o ")
	}
	return nil
}

// install starts the target's manager, puts its units in place with their drop-ins
// and starts its sockets.
func (t *target) install() (err error) {
	if t.m, err = systemdtest.Start(top, tmp+"/"+t.key); err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(t.port)
	switch {
	case t.stage == "":
		t.entry = []string{"dice-flask.service"}
		dir := t.m.RuntimeDir() + "/systemd/user"
		unit, err := os.ReadFile("internal/bench/flask/dice-flask.service")
		if err = errors.Join(err, os.MkdirAll(dir, 0o755)); err != nil {
			return err
		}
		if err = os.WriteFile(dir+"/dice-flask.service", unit, 0o644); err != nil {
			return err
		}
	case t.stage == "01-always-on": // no socket: the address is the program's -addr
		err = t.m.InstallStage(t.stage, tmp+"/"+t.bin, "", append(t.args, "-addr", addr)...)
	default:
		err = t.m.InstallBackend(t.stage, t.backend, tmp+"/"+t.bin, addr, t.args...)
	}
	if err == nil && t.stage != "" {
		t.entry, err = systemdtest.EntryUnits(top, t.stage)
	}
	// zz-bench sorts after run-stage.conf, whose ExecStart= it may replace.
	for i := 0; err == nil && i < len(t.dropIns); i += 2 {
		err = t.m.DropIn(t.dropIns[i], "zz-bench", t.dropIns[i+1])
	}
	if err == nil && t.socketActivated() {
		err = t.systemctl(append([]string{"start"}, t.entry...)...)
	}
	return err
}

// socketActivated tells whether sockets start the target.
func (t *target) socketActivated() bool {
	return len(t.entry) > 0 && strings.HasSuffix(t.entry[0], ".socket")
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
	if err := t.systemctl(append([]string{"start"}, t.entry...)...); err != nil {
		return err
	}
	return waitFor(20*time.Second, t.label+" to listen", func() bool {
		tcp, _ := os.ReadFile("/proc/net/tcp") // 0A: listening
		return strings.Contains(string(tcp), fmt.Sprintf(" 0100007F:%04X 00000000:0000 0A", t.port))
	})
}

// stop stops the target's services, unless they exit by themselves, and waits until
// systemd reports all of them inactive and its sockets listening again.
func (t *target) stop() error {
	if !t.exits {
		if err := t.systemctl("stop", "dice*.service"); err != nil {
			return err
		}
	}
	return waitFor(30*time.Second, t.label+" to have no service running", t.quiet)
}

// quiet tells whether systemd reports no service of the target active, and its
// sockets listening.
func (t *target) quiet() bool {
	states, err := t.m.Prop("dice*.service", "ActiveState")
	for _, state := range strings.Fields(states) {
		if state != "inactive" && state != "failed" {
			return false
		}
	}
	return err == nil && (!t.socketActivated() || t.listening())
}

// listening tells whether every socket of the target listens.
func (t *target) listening() bool {
	states, err := t.m.Prop("dice*.socket", "SubState")
	for _, state := range strings.Fields(states) {
		if state != "listening" {
			return false
		}
	}
	return err == nil && states != ""
}

// memory is the target's processes, the main process of each dice service (04's
// instances, 05's proxy and app) and their children (a container's), and their RSS:
// VmRSS, what `ps -o rss=` shows.
func (t *target) memory() (r rss) {
	pids, _ := t.m.Prop("dice*.service", "MainPID")
	for todo := strings.Fields(pids); len(todo) > 0; todo = todo[1:] {
		status, err := os.ReadFile("/proc/" + todo[0] + "/status")
		if _, value, ok := strings.Cut(string(status), "VmRSS:"); err == nil && ok {
			kib, _ := strconv.Atoi(strings.Fields(value)[0])
			r.procs, r.kib = r.procs+1, r.kib+kib
			children, _ := os.ReadFile("/proc/" + todo[0] + "/task/" + todo[0] + "/children")
			todo = append(todo, strings.Fields(string(children))...)
		}
	}
	return r
}

// waitFor polls cond, as often as systemctl answers, until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
	}
	return nil
}
