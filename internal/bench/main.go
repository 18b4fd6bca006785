// Command bench measures the four stages side by side under a real systemd (a private
// user manager of scripts/user-manager) and writes docs/bench.md and docs/bench.svg;
// `make bench` runs it. It compares them with the blog post's Flask app and with a
// floor: a Go program without net/http, started by the same units.
//
//	go run ./internal/bench            the full run (a few minutes), into docs/
//	go run ./internal/bench -quick     a smoke run (< 1 min), into a temporary directory
//
// Benchmarks need a quiet machine: run it when `uptime` shows a low load.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is one thing measured: a stage, a floor or Flask, with its units installed
// under its own name and port.
type target struct {
	key, label string
	units      string   // the units' directory
	binary     string   // what ExecStart= runs ("" for Flask)
	args       []string // appended to ExecStart=
	port       int
	socket     string // name.socket, or "" when always on
	service    string // name.service or name@.service
}

// settings of one run; -quick makes everything small.
type settings struct {
	quick                 bool
	cold                  int           // cold starts per target
	rounds                int           // alternating rounds of the load tests
	warm, connDur, reDur  time.Duration // per round (warm, conn/s), in all (re-activations)
	requests              int           // requests of the RSS phases
	idle                  time.Duration // stage 03's -idle
	ldflags               string
	workers               int
	out, portBase, stateD string
}

func main() {
	var s settings
	flag.BoolVar(&s.quick, "quick", false, "smoke run: few iterations, output to a temp dir")
	flag.StringVar(&s.out, "out", "docs", "directory for bench.md and bench.svg")
	flag.StringVar(&s.portBase, "port", "18100", "first of the 10 ports used on 127.0.0.1")
	flag.StringVar(&s.ldflags, "ldflags", "", "go build -ldflags for the stages and the floor")
	flag.StringVar(&s.stateD, "state", filepath.Join(os.TempDir(),
		"socket-dice-bench-"+strconv.Itoa(os.Getuid())), "state directory of the private manager")
	cold := flag.Int("cold", 0, "cold starts per target (default 30, 3 with -quick)")
	flag.Parse()
	s.cold, s.rounds, s.warm, s.connDur, s.reDur, s.requests = 30, 3, 3*time.Second,
		10*time.Second, 10*time.Second, 1000
	s.idle, s.workers = 100*time.Millisecond, 16
	if s.quick {
		s.cold, s.rounds, s.warm, s.connDur, s.reDur, s.requests = 3, 1, 500*time.Millisecond,
			time.Second, 2*time.Second, 100
		if s.out == "docs" {
			dir, err := os.MkdirTemp("", "dice-bench-out-")
			check(err)
			s.out = dir
		}
	}
	if *cold > 0 {
		s.cold = *cold
	}
	check(run(s))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(s settings) error {
	top, err := os.Getwd()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(top, "go.mod")); err != nil {
		return fmt.Errorf("run bench from the repository's top directory (make bench)")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil || exec.Command("/usr/bin/python3",
		"-c", "import flask").Run() != nil {
		return fmt.Errorf("Debian's python3-flask is missing: apt-get install python3-flask " +
			"(make measure installs it)")
	}
	base, err := strconv.Atoi(s.portBase)
	if err != nil {
		return err
	}
	rep := &report{settings: s, started: time.Now(), load0: loadavg()}

	// Build the stages and the floor into a directory services may read.
	bin, err := os.MkdirTemp("", "dice-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	_ = os.Chmod(bin, 0o755)
	rep.sizes = map[string]int64{}
	for _, pkg := range []string{"01-always-on", "02-socket-activated", "03-idle-exit",
		"04-accept-yes", "internal/bench/floor"} {
		out := filepath.Join(bin, filepath.Base(pkg))
		logf("go build -ldflags=%q ./%s", s.ldflags, pkg)
		cmd := exec.Command("go", "build", "-buildvcs=false", "-ldflags="+s.ldflags, "-o", out,
			"./"+pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./%s: %w", pkg, err)
		}
		if fi, err := os.Stat(out); err == nil {
			rep.sizes[filepath.Base(pkg)] = fi.Size()
		}
	}

	m := &manager{top: top, state: s.stateD}
	if err := m.up(); err != nil {
		return err
	}
	defer m.down()
	// Ctrl-C still stops the manager and its units.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		m.down()
		os.Exit(1)
	}()

	idle := "-idle " + s.idle.String()
	floor := filepath.Join(bin, "floor")
	units := func(stage string) string { return filepath.Join(top, "units", stage) }
	targets := []*target{
		{key: "01", label: "01-always-on", units: units("01-always-on"),
			binary: filepath.Join(bin, "01-always-on")},
		{key: "02", label: "02-socket-activated", units: units("02-socket-activated"),
			binary: filepath.Join(bin, "02-socket-activated")},
		{key: "03", label: "03-idle-exit", units: units("03-idle-exit"),
			binary: filepath.Join(bin, "03-idle-exit"), args: []string{idle}},
		{key: "04", label: "04-accept-yes", units: units("04-accept-yes"),
			binary: filepath.Join(bin, "04-accept-yes")},
		{key: "f02", label: "floor, 02's units", units: units("02-socket-activated"), binary: floor},
		{key: "f03", label: "floor, 03's units", units: units("03-idle-exit"), binary: floor},
		{key: "f04", label: "floor, 04's units", units: units("04-accept-yes"), binary: floor},
		{key: "flask", label: "Flask (the blog's dice.py)"},
	}
	byKey := map[string]*target{}
	for i, t := range targets {
		t.port = base + i
		name := "bench-" + t.key
		byKey[t.key] = t
		if t.key == "flask" {
			t.service = name + ".service"
			if err := m.installFlask(filepath.Join(top, "internal", "bench", "flask"), name,
				t.port); err != nil {
				return err
			}
			continue
		}
		if err := m.install(t.units, name, t.binary, t.args, t.port); err != nil {
			return err
		}
		t.service = name + ".service"
		if _, err := os.Stat(filepath.Join(t.units, "dice.socket")); err == nil {
			t.socket = name + ".socket"
		}
		if _, err := os.Stat(filepath.Join(t.units, "dice@.service")); err == nil {
			t.service = name + "@.service"
		}
		// Measuring 02's cold start stops its service 30 times in a row; systemd's
		// default start limit (5 starts in 10 s) would fail it, and its socket, after
		// 5. Lifting it changes no timing. (03's units size the limit themselves.)
		if t.units == units("02-socket-activated") {
			if err := m.dropIn(t.service, "[Unit]\nStartLimitIntervalSec=0\n"); err != nil {
				return err
			}
		}
	}
	if _, err := systemctl("daemon-reload"); err != nil {
		return err
	}
	for _, t := range targets {
		if t.socket != "" {
			if _, err := systemctl("start", t.socket); err != nil {
				return err
			}
		}
	}
	rep.versions = versions()

	for _, key := range []string{"01", "02", "03", "04", "flask"} {
		if err := rep.measureRSS(byKey[key], s); err != nil {
			return fmt.Errorf("RSS of %s: %w", byKey[key].label, err)
		}
	}
	if err := rep.measureCold(targets, byKey["flask"], s); err != nil {
		return err
	}
	for _, key := range []string{"01", "flask"} {
		if _, err := systemctl("start", byKey[key].service); err != nil {
			return err
		}
	}
	if err := rep.measureWarm([]*target{byKey["01"], byKey["02"], byKey["03"], byKey["flask"]},
		s); err != nil {
		return err
	}
	for _, key := range []string{"01", "02", "flask"} {
		_, _ = systemctl("stop", byKey[key].service)
	}
	if err := rep.measureConns(byKey["04"], byKey["f04"], s); err != nil {
		return err
	}
	if err := rep.measureReactivations(byKey["03"], s); err != nil {
		return err
	}
	rep.load1 = loadavg()
	rep.took = time.Since(rep.started)
	if err := os.MkdirAll(s.out, 0o755); err != nil {
		return err
	}
	md := filepath.Join(s.out, "bench.md")
	if err := os.WriteFile(md, []byte(rep.markdown()), 0o644); err != nil {
		return err
	}
	svg := filepath.Join(s.out, "bench.svg")
	if err := os.WriteFile(svg, []byte(rep.svg()), 0o644); err != nil {
		return err
	}
	logf("wrote %s and %s in %s", md, svg, rep.took.Round(time.Second))
	return nil
}

// versions says what the numbers were measured with.
func versions() map[string]string {
	v := map[string]string{"go": runtime.Version(), "cpus": strconv.Itoa(runtime.NumCPU())}
	if out, err := exec.Command("systemctl", "--version").Output(); err == nil {
		v["systemd"] = strings.Fields(string(out))[1]
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		v["kernel"] = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("/usr/bin/python3", "-c",
		"import flask, sys; print(flask.__version__, sys.version.split()[0])").Output(); err == nil {
		f := strings.Fields(string(out))
		v["flask"], v["python"] = f[0], f[1]
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, val, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				v["cpu"] = strings.TrimSpace(val)
				break
			}
		}
	}
	return v
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// percentile of sorted durations, nearest rank.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func median(f []float64) float64 {
	if len(f) == 0 {
		return 0
	}
	s := append([]float64(nil), f...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
