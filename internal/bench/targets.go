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

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

// python is Debian's, with python3-flask; not a venv's on PATH.
const python = "/usr/bin/python3"

// target is one thing measured (a stage, a floor or Flask) in a systemd user manager
// of its own, and what was measured of it.
type target struct {
	key, label string
	stage      string   // its units: units/<stage>/ (a stage's, or the post's: post-*)
	bin        string   // the directory in tmp of the programs its units run: bin, floor, cfloor
	in         []string // the tables it is a row of: rss, cold, warm, conn, day (report.go)
	dropIns    []string // unit, content, ...: what the run changes besides binary and port
	exits      bool     // its service exits by itself: when idle (03, 05), after its request (04)
	args       []string // appended to the committed ExecStart= of its program (03's -idle)
	backend    string   // stage 05's app: "" (stage 01's program) or "flask"
	unix       string   // requests go to this unix socket, below XDG_RUNTIME_DIR, not TCP
	path       string   // what requests ask for, if not /roll (06's unix socket: /stats)
	flask      bool     // the app is the post's dice.py (a label with "Flask")

	port  int
	entry []string // the units that start it (scripts/run-stage --units)
	m     *systemdtest.Manager

	rss              [4]rss // started, after the 1st request, after n, connection closed
	cold, warm, conn sample
	restart, upgrade dicetest.Kept // 16 kept-alive clients through restarts, an upgrade
}

// addTargets adds what is measured, each on a free port of its own, in the order
// of the tables' rows. -measure leaves out the floors and variants; without Flask, its
// rows go.
//
// A new stage adds its rows here: add(key, label, stage, bin, tables, dropIns...) per
// row, then what else it needs (exits, args, unix). Its units come from units/<stage>/
// as scripts/run-stage installs them. Its tables: "rss", "cold", "warm", "conn", "day",
// or a new one: a region in docs/bench.md, a figure in report.go's figures(), a
// measurement (alternate) in load.go's measureLoads.
func addTargets() {
	port := freePort()
	add := func(key, label, stage, bin string, in []string, dropIns ...string) *target {
		t := &target{key: key, label: label, stage: stage, bin: bin, in: in, dropIns: dropIns,
			port: port, flask: strings.Contains(label, "Flask")}
		port = freePort()
		if !t.flask || flaskOK {
			targets = append(targets, t)
		}
		return t
	}
	all, cold := []string{"rss", "cold", "warm", "day"}, []string{"cold"}
	// Timing cold starts stops 02's service 30 times in a row: the default start limit
	// (5 starts in 10 s) would fail it after 5. 03's units size their own.
	noLimit := "# bench: stopped and started 30 times.\n[Unit]\nStartLimitIntervalSec=0\n"
	add("01", "01-always-on", "01-always-on", "bin", []string{"rss", "warm", "day"})
	add("02", "02-socket-activated", "02-socket-activated", "bin", all, "dice.service", noLimit)
	t := add("03", "03-idle-exit", "03-idle-exit", "bin", append(all, "restart"))
	t.exits, t.args = true, []string{"-idle", idle.String()}
	t = add("07", "07-fd-store", "07-fd-store", "bin", []string{"restart"})
	t.exits, t.args = true, []string{"-idle", idle.String()}
	add("04", "04-accept-yes", "04-accept-yes", "bin",
		[]string{"rss", "cold", "conn", "day"}).exits = true
	// 05 with stage 01's program behind the proxy, and with the post's dice.py; the
	// proxy's idle time is at least 1 s (docs/bench.md says why).
	for _, key := range []string{"05", "05f"} {
		app := freePort()
		t := add(key, map[string]string{"05": "05-socket-proxyd", "05f": "05, Flask backend"}[key],
			"05-socket-proxyd", "bin", all, "dice-proxy.service", fmt.Sprintf("# bench: "+
				"another idle time and port.\n[Service]\nEnvironment=PORT=%d IDLE=%s\n",
				app, max(idle, time.Second)),
			"dice-backend.service", fmt.Sprintf("# bench: another port.\n[Service]\n"+
				"Environment=PORT=%d\n", app))
		t.exits = true
		if t.flask {
			t.backend = "flask"
		}
	}
	// 06 over TCP, and over its unix socket, which answers only GET /stats.
	t = add("06", "06-named-sockets, TCP", "06-named-sockets", "bin", []string{"cold", "warm"})
	t.exits, t.args = true, []string{"-idle", idle.String()}
	t = add("06u", "06, unix socket (/stats)", "06-named-sockets", "bin", []string{"cold", "warm"})
	t.exits, t.args = true, []string{"-idle", idle.String()}
	t.unix, t.path = "dice-admin.sock", "/stats"
	// The post's next step: its dice_ng.py on fd 3, under its units.
	add("fs", "Flask, socket-activated", "post-socket-activated", "bin", all, "dice.service",
		noLimit+"[Service]\nEnvironment=PYTHONDONTWRITEBYTECODE=1\n")
	// 08: 03's program in a podman container (conmon beside it), as its units run it.
	t = add("08", "08-container", "08-container", "bin", all)
	t.exits, t.args = true, []string{"-idle", idle.String()}
	// The post's start, its dice.py always on; the port is in its ExecStart=.
	add("flask", "Flask, always on", "post-always-on", "bin", all, "dice.service", fmt.Sprintf(
		"# bench: another port.\n[Service]\nExecStart=\nExecStart=%s -m flask --app "+
			"%s/post/dice.py run --host 127.0.0.1 --port %d\n", python, top, port))
	if *measure {
		return
	}
	add("f02", "floor, 02's units", "02-socket-activated", "floor", cold, "dice.service", noLimit)
	add("f03", "floor, 03's units", "03-idle-exit", "floor", cold).exits = true
	add("f04", "floor, 04's units", "04-accept-yes", "floor", []string{"cold", "conn"}).exits = true
	add("c04", "C floor, 04's units", "04-accept-yes", "cfloor", []string{"cold", "conn"}).exits = true
	// What the units do not set, measured against them (docs/design-notes.md).
	add("01g", "01, GOGC=25", "01-always-on", "bin", []string{"rss"},
		"dice.service", "[Service]\nEnvironment=GOGC=25\n")
	add("01m", "01, GOMEMLIMIT=2MiB", "01-always-on", "bin", []string{"rss"},
		"dice.service", "[Service]\nEnvironment=GOMEMLIMIT=2MiB\n")
	add("04p", "04, GOMAXPROCS=1", "04-accept-yes", "bin", []string{"conn"},
		"dice@.service", "[Service]\nEnvironment=GOMAXPROCS=1\n").exits = true
}

// freePort is systemdtest.Port, or the end of the run if there is none.
func freePort() int {
	port, err := systemdtest.Port()
	if err != nil {
		panic(err)
	}
	return port
}

// podman is the environment of podman's storage for stage 08, below tmp (set by build).
var podman []string

// podmanRuns builds stage 08's image from tmp/bin into storage of the bench's own, and
// tells whether podman runs it here: the program, given no socket, exits 1 (podman's
// own failures are 125-127).
func podmanRuns() bool {
	var err error
	if podman, err = systemdtest.PodmanEnv(tmp + "/podman"); err != nil {
		return false
	}
	if withPodman("make", "-s", "image", "BIN="+tmp+"/bin").Run() != nil {
		return false
	}
	err = withPodman("podman", "run", "--rm", "--network=none", "localhost/dice").Run()
	exit, ok := err.(*exec.ExitError)
	return ok && exit.ExitCode() == 1
}

// withPodman is a command that runs podman with the bench's storage (podman).
func withPodman(name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Env = append(os.Environ(), podman...)
	return c
}

// flaskOK tells whether the post's Flask app can run here: Debian's python3 with Flask.
var flaskOK = exec.Command(python, "-c", "import flask").Run() == nil

// noFlask says that the Flask rows were left out, and how to have them.
const noFlask = "Flask rows skipped: " + python + " cannot import flask; for them: " +
	"apt-get install python3-flask (zypper install python3-Flask)"

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

// build builds the programs the targets' units run into tmp/<bin>/ with `make build`:
// every stage's into bin/, the Go floor into floor/ (named as the stages' programs it
// stands in for); the C floor with cc, where there is one (else its rows go).
func build() error {
	err := errors.Join(makeBuild(tmp+"/bin", ""), os.Mkdir(tmp+"/cfloor", 0o755))
	for _, t := range slices.Clone(targets) {
		skip := ""
		switch {
		case err != nil:
		case t.bin == "floor":
			err = makeBuild(tmp+"/floor", "internal/bench/floor", t.programs()...)
		case t.bin == "cfloor" && exec.Command("cc", "-static", "-O2", "-o", tmp+"/cfloor/"+
			t.programs()[0], "internal/bench/cfloor/floor.c").Run() != nil:
			skip = "no C floor (it needs a C compiler and a static libc: apt-get install gcc)"
		case t.stage == "08-container" && os.Getuid() != 0:
			// A user's private manager runs as root of a user namespace that maps that
			// user only, where podman takes itself for root and cannot be (as 08's tests).
			skip = "no 08 (podman under the bench's own systemd needs root: sudo make bench)"
		case t.stage == "08-container" && !podmanRuns():
			skip = "no 08 (it needs podman that runs a container here: apt-get install podman)"
		case t.stage == "08-container":
			t.dropIns = append(t.dropIns, "dice.service", "# bench: podman's storage.\n"+
				"[Service]\nEnvironment="+strings.Join(podman, " ")+"\n")
		}
		if skip != "" {
			logf("%s", skip)
			targets = slices.DeleteFunc(targets, func(u *target) bool { return u == t })
		}
	}
	return err
}

// buildCommand is the command `make build` ran, as it shows it, without its -o.
var buildCommand string

// makeBuild runs `make build` into dir: the programs named (all if none), from the
// package pkg if not empty.
func makeBuild(dir, pkg string, programs ...string) (err error) {
	out, err := systemdtest.Build(top, dir, pkg, programs...)
	buildCommand, _, _ = strings.Cut(out, " -o ")
	return err
}

// programs are the programs t's units run, as scripts/run-stage --programs says.
func (t *target) programs() (p []string) {
	lines, _ := systemdtest.Query(top, "--programs", t.stage)
	for _, line := range lines {
		if fields := strings.Fields(line); len(fields) > 1 {
			p = append(p, fields[1])
		}
	}
	return p
}

// install starts the target's manager, puts its units in place with their drop-ins
// and starts its sockets.
func (t *target) install() (err error) {
	if t.m, err = systemdtest.Start(top, tmp+"/"+t.key); err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(t.port)
	if t.stage == "01-always-on" { // no socket: the address is the program's -addr
		err = t.m.InstallStage(t.stage, tmp+"/"+t.bin, "", append(t.args, "-addr", addr)...)
	} else {
		err = t.m.InstallBackend(t.stage, t.backend, tmp+"/"+t.bin, addr, t.args...)
	}
	if err == nil {
		var units []string
		units, err = systemdtest.Query(top, "--units", t.stage)
		t.entry = strings.Fields(strings.Join(units, " "))
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

// stopAll stops the targets' managers, with their units and processes, and removes
// stage 08's containers and image.
func stopAll() {
	for _, t := range targets {
		if t.m != nil {
			if err := t.m.Stop(); err != nil {
				logf("%s: %v", t.label, err)
			}
		}
	}
	if podman != nil {
		if out, err := withPodman("podman", "system", "reset", "--force").CombinedOutput(); err != nil {
			logf("podman system reset: %v: %s", err, out)
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
// instances, 05's proxy and app, 08's conmon) and their children (08's program), and
// their RSS: VmRSS, what `ps -o rss=` shows, of it the binaries' pages (RssFile, and
// RssShmem for a binary in a tmpfs such as Debian 13's /tmp), and
// the helper's beside the program (05's proxy, 08's conmon).
func (t *target) memory() (r rss) {
	pids, _ := t.m.Prop("dice*.service", "MainPID")
	for todo := strings.Fields(pids); len(todo) > 0; todo = todo[1:] {
		status, err := os.ReadFile("/proc/" + todo[0] + "/status")
		if kib := statusKiB(status, "VmRSS"); err == nil && kib > 0 {
			r.procs, r.kib, r.file = r.procs+1, r.kib+kib, r.file+
				statusKiB(status, "RssFile")+statusKiB(status, "RssShmem")
			if strings.HasPrefix(string(status), "Name:\tsystemd-socket-") ||
				strings.HasPrefix(string(status), "Name:\tconmon") {
				r.helper += kib
			}
			children, _ := os.ReadFile("/proc/" + todo[0] + "/task/" + todo[0] + "/children")
			todo = append(todo, strings.Fields(string(children))...)
		}
	}
	return r
}

// statusKiB is the field name of a /proc/<pid>/status, in KiB; 0 if it has none.
func statusKiB(status []byte, name string) int {
	_, value, _ := strings.Cut(string(status), "\n"+name+":")
	kib, _ := strconv.Atoi(strings.Fields(value + " 0")[0])
	return kib
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
