package main

import (
	_ "embed"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

//go:embed report.tmpl
var measureTemplate string

// region is a generated part of docs/bench.md, <!-- bench:name -->…<!-- /bench -->, its
// markers on lines of their own (a table, a paragraph) or within a sentence (a figure).
var region = regexp.MustCompile(`(?s)(<!-- bench:([a-z0-9]+) -->\n?).*?(\n?<!-- /bench -->)`)

// write prints the RSS table (-measure), or fills the figures of docs/bench.md, the
// READMEs and docs/ (-quick: into a new temporary directory).
func write() (err error) {
	if *measure {
		if !flaskOK {
			defer fmt.Println("\n" + noFlask)
		}
		return template.Must(template.New("").Parse(measureTemplate)).Execute(os.Stdout, figures())
	}
	files, err := fill()
	dir := "."
	if err == nil && *quick {
		dir, err = os.MkdirTemp("", "dice-bench-out-")
	}
	logf("the run took %s; writing the figures of %s in %s",
		time.Since(started).Round(time.Second), slices.Sorted(maps.Keys(files)), dir)
	for name, text := range files {
		if err == nil {
			err = errors.Join(os.MkdirAll(filepath.Dir(dir+"/"+name), 0o755),
				os.WriteFile(dir+"/"+name, []byte(text), 0o644))
		}
	}
	return err
}

// fill is every file with figures (docs/bench.md, README.md, the stages' READMEs,
// docs/*.md) by name, each region's content replaced by the figure of its name. It
// fails, naming them, on a region that is no figure and on a figure in no region.
func fill() (map[string]string, error) {
	values, files, errs := figures(), map[string]string{}, []error{}
	unused := maps.Clone(values)
	names, _ := filepath.Glob("0*/README.md")
	more, _ := filepath.Glob("docs/*.md")
	for _, name := range append(append([]string{"README.md"}, names...), more...) {
		md, err := os.ReadFile(name)
		errs = append(errs, err)
		files[name] = region.ReplaceAllStringFunc(string(md), func(r string) string {
			m := region.FindStringSubmatch(r)
			value, ok := values[m[2]]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: <!-- bench:%s --> is no figure of the bench",
					name, m[2]))
				return r
			}
			delete(unused, m[2])
			return m[1] + strings.TrimSuffix(value, "\n") + m[3]
		})
		if files[name] == string(md) {
			delete(files, name)
		}
	}
	if len(unused) > 0 {
		errs = append(errs, fmt.Errorf("no region <!-- bench:NAME -->…<!-- /bench --> in "+
			"README.md, 0*/README.md or docs/*.md for %s: the run would leave these figures out",
			slices.Sorted(maps.Keys(unused))))
	}
	return files, errors.Join(errs...)
}

// figures are what bench.md shows between markers, by name, and -measure's template
// some of them: the machine, the run's settings, the tables.
func figures() map[string]string {
	var sizes []string
	for _, bin := range []string{"bin", "floor", "cfloor"} {
		programs, _ := os.ReadDir(tmp + "/" + bin)
		for _, p := range programs {
			if fi, err := p.Info(); err == nil {
				sizes = append(sizes, fmt.Sprintf("%s/%s %.1f MB", bin, p.Name(),
					float64(fi.Size())/1e6))
			}
		}
	}
	kind, cpu := "full run", "?"
	if *quick {
		kind = "**a quick smoke run: numbers not meaningful**"
	}
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if _, after, ok := strings.Cut(string(info), "model name"); ok {
			_, cpu, _ = strings.Cut(strings.SplitN(after, "\n", 2)[0], ":")
		}
	}
	if !flaskOK {
		kind += " (" + noFlask + ")"
	}
	flask, p50 := get("flask"), func(k string) time.Duration { return get(k).cold.p(50) }
	return map[string]string{
		// README.md, the stages' READMEs, docs/design-notes.md
		"flaskrss": mib(flask, flask.rss[2].kib), "gorss": mib(get("01"), goMax()),
		"goflask":    times(goMax(), flask.rss[2].kib),
		"cold0204":   spread(p50("02"), p50("03"), p50("04")),
		"coldfloors": spread(p50("f02"), p50("f03"), p50("f04")),
		"cold05":     ms(p50("05")), "coldflask": spread(p50("fs")),
		"rss01": mib(get("01"), get("01").rss[1].kib), "rss03": mib(get("03"), get("03").rss[1].kib),
		"rss04": mib(get("04"), get("04").rss[1].kib), "rss05": mib(get("05"), get("05").rss[1].kib),
		"rssproxy":  mib(get("05"), get("05").rss[1].helper),
		"rss08":     mib(get("08"), get("08").rss[1].kib),
		"rssconmon": mib(get("08"), get("08").rss[1].helper),
		"cold03":    spread(p50("03")), "cold08": spread(p50("08")),
		"rssflask":      mib(flask, flask.rss[1].kib),
		"warm05":        ratio(get("05").warm, get("01").warm) + "×",
		"warm0201":      ratio(get("02").warm, get("01").warm),
		"rss01n":        mib(get("01"), get("01").rss[2].kib),
		"file01":        mib(get("01"), get("01").rss[2].file),
		"anon01":        mib(get("01"), get("01").rss[2].kib-get("01").rss[2].file),
		"rss01gogc":     mib(get("01g"), get("01g").rss[2].kib),
		"rss01mem":      mib(get("01m"), get("01m").rss[2].kib),
		"rss01memstart": mib(get("01m"), get("01m").rss[0].kib),
		"connc":         ratio(get("04").conn, get("c04").conn) + "×",
		"connms04":      perConn(get("04").conn), "connmsfloor": perConn(get("f04").conn),
		"conngmp": ratio(get("04p").conn, get("c04").conn) + "×",
		// docs/bench.md
		"kind":    kind,
		"date":    started.UTC().Format("2006-01-02 15:04 UTC"),
		"os":      osRelease(),
		"cpus":    fmt.Sprint(runtime.NumCPU()),
		"cpu":     strings.TrimSpace(cpu),
		"kernel":  procFile("sys/kernel/osrelease"),
		"go":      runtime.Version(),
		"systemd": strings.Fields(output("systemctl", "--version") + " ? ?")[1],
		"flask": output(python, "-c", "import sys, flask, importlib.metadata as m; "+
			"print(m.version('flask'), '(Python', sys.version.split()[0]+')')"),
		"load0": load0, "load1": loadavg(), "took": time.Since(started).Round(time.Second).String(),
		"build": "`" + buildCommand + "`", "sizes": strings.Join(sizes, ", "),
		"idle": idle.String(), "requests": fmt.Sprint(requests), "starts": fmt.Sprint(starts),
		"rounds": fmt.Sprint(rounds), "clients": fmt.Sprint(clients),
		"warmtime": warmDur.String(), "conntime": connDur.String(),
		"idle03": span(committedIdle("03-idle-exit")),
		"idle05": span(committedIdle("05-socket-proxyd")),
		"rss": table(fmt.Sprintf("| stage | started, no request yet | after the 1st request "+
			"| after %d requests | connection closed |", requests), cells("rss",
			func(t *target) []string {
				return []string{t.rss[0].String(), t.rss[1].String(), t.rss[2].String(),
					t.rss[3].String()}
			})),
		"cold": table("| | p50 | p95 | n | failed |", cells("cold", func(t *target) []string {
			return []string{ms(t.cold.p(50)), ms(t.cold.p(95)), fmt.Sprint(len(t.cold.times)),
				failures(t.cold)}
		})),
		"warm": table("| | requests/s | ratio to 01 | to 02 | failed |", cells("warm",
			func(t *target) []string {
				return []string{fmt.Sprintf("%.0f", t.warm.rate()), ratio(t.warm, get("01").warm),
					ratio(t.warm, get("02").warm), failures(t.warm)}
			})),
		"conn": table("| | connections/s | failed | ratio to the Go floor | to the C floor |",
			cells("conn", func(t *target) []string {
				return []string{fmt.Sprintf("%.0f", t.conn.rate()), failures(t.conn),
					ratio(t.conn, get("f04").conn), ratio(t.conn, get("c04").conn)}
			})),
		"restart": table("| | under load | answered | failed | reconnects | longest wait |",
			slices.Concat(cells("restart", func(t *target) []string {
				return kept("6 restarts", t.restart)
			}), cells("restart", func(t *target) []string { return kept("an upgrade", t.upgrade) }))),
		"day": table("| | active a day, 10 calls | MiB·h | active a day, 1,000 calls | MiB·h |",
			cells("day", func(t *target) []string {
				return []string{span(active(t, 10)), num(mibh(t, 10)), span(active(t, 1000)),
					num(mibh(t, 1000))}
			})),
	}
}

// cells is a row per target of table: its label, then cells(t).
func cells(table string, cells func(*target) []string) (r [][]string) {
	for _, t := range rows(table) {
		r = append(r, append([]string{t.label}, cells(t)...))
	}
	return r
}

// table is a Markdown table: header, then rows.
func table(header string, rows [][]string) string {
	s := header + "\n" + strings.Repeat("|---", strings.Count(header, "|")-1) + "|\n"
	for _, cells := range rows {
		s += "| " + strings.Join(cells, " | ") + " |\n"
	}
	return s
}

// goMax is the largest RSS of a Go stage (01-04) after its 1st or nth request, in KiB.
func goMax() (kib int) {
	for _, k := range []string{"01", "02", "03", "04"} {
		kib = max(kib, get(k).rss[1].kib, get(k).rss[2].kib)
	}
	return kib
}

// active is how long t's processes run in a day of calls spread evenly over 24 h, as
// docs/bench.md's "What it saves in a day" says.
func active(t *target, calls int) time.Duration {
	if !t.exits {
		return 24 * time.Hour
	}
	gap := 24 * time.Hour / time.Duration(calls)
	return time.Duration(calls) * min(gap, t.cold.p(50)+committedIdle(t.stage))
}

// mibh is memory × time, in MiB·h, that t holds in such a day: with its RSS after
// the 1st request, but for more than 10 calls after n requests if it stays.
func mibh(t *target, calls int) float64 {
	phase := 1
	if calls > 10 && !t.exits {
		phase = 2
	}
	return float64(t.rss[phase].kib) / 1024 * active(t, calls).Hours()
}

// idleSetting is the idle time in a committed unit: 03's -idle (in ExecStart=, or a
// container's Exec=), 05's IDLE= (the proxy's --exit-idle-time).
var idleSetting = regexp.MustCompile(`(?m)^[^#\n]*(?:-idle |\bIDLE=)([0-9][^\s']*)`)

// committedIdle is the idle time in the committed units of stage; 0 if none.
func committedIdle(stage string) time.Duration {
	files, _ := systemdtest.Query(top, "--files", stage)
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if m := idleSetting.FindSubmatch(data); m != nil {
			d, _ := time.ParseDuration(string(m[1]))
			return d
		}
	}
	return 0
}

// mib is kib, of t's memory, in MiB; "–" if t was not measured (no Flask here).
func mib(t *target, kib int) string {
	if t.m == nil {
		return "–"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}

// times is a / b as a factor, "–" when b is 0 (not measured).
func times(a, b int) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(a)/float64(b))
}

// spread is the range of ds: "16.1–24.2 ms", or one figure if they are the same; "–"
// if one was not measured (no Flask here).
func spread(ds ...time.Duration) string {
	low, high := ms(slices.Min(ds)), ms(slices.Max(ds))
	if slices.Min(ds) == 0 {
		return "–"
	}
	if low == high {
		return low
	}
	return strings.TrimSuffix(low, " ms") + "–" + high
}

// perConn is the time a connection took: the rate's inverse, all clients together.
func perConn(s sample) string {
	if s.ok == 0 {
		return "–"
	}
	return ms(time.Duration(float64(time.Second) / s.rate()))
}

// output is the trimmed standard output of a command, "?" if it fails.
func output(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// procFile is the trimmed content of /proc/name, "?" if it cannot be read.
func procFile(name string) string {
	data, err := os.ReadFile("/proc/" + name)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}

// osRelease is the system's name, PRETTY_NAME in /etc/os-release; "?" if none.
func osRelease() string {
	data, _ := os.ReadFile("/etc/os-release")
	if m := regexp.MustCompile(`(?m)^PRETTY_NAME="?([^"\n]*)`).FindSubmatch(data); m != nil {
		return string(m[1])
	}
	return "?"
}

// loadavg is the load average over 1, 5 and 15 minutes.
func loadavg() string {
	return strings.Join(strings.Fields(procFile("loadavg") + " ? ? ?")[:3], " ")
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

// kept is a row of the restart table; an error of the run itself (a failed restart)
// shows in its last cell.
func kept(what string, k dicetest.Kept) []string {
	wait := ms(k.LongestWait)
	if k.Failed == 0 && len(k.Errors) > 0 {
		wait += fmt.Sprintf(" (%v)", k.Errors)
	}
	return []string{what, fmt.Sprint(k.Answered), fmt.Sprint(k.Failed), fmt.Sprint(k.Reconnects), wait}
}

// ratio is a's rate to b's, "–" when b was not measured.
func ratio(a, b sample) string {
	if b.ok == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a.rate()/b.rate())
}
