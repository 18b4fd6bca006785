package main

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// report.tmpl holds the text of -measure's output and of bench.md.
//
//go:embed report.tmpl
var reportTemplates string

// write prints the RSS table (-measure), or writes bench.md, bench.svg and bench-day.svg
// into docs/ (-quick: into a new temporary directory).
func write() (err error) {
	tmpl := template.Must(template.New("").Parse(reportTemplates))
	if *measure {
		return tmpl.ExecuteTemplate(os.Stdout, "measure", data())
	}
	var md strings.Builder
	dir, files := "docs", map[string]string{
		"bench.svg": svg(fmt.Sprintf("socket-dice: memory and cold start (%s, %d CPUs, %s)",
			started.UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version()),
			panel{fmt.Sprintf("RSS after %d requests", requests), " MiB", pick(rssKeys...),
				func(t *target) float64 { return float64(t.rss[2].kib) / 1024 }},
			panel{"Cold first response, p50", " ms", pick(coldKeys...),
				func(t *target) float64 { return float64(t.cold.p(50)) / 1e6 }}),
		"bench-day.svg": svg("Memory × time a day, calls spread over the day (MiB·h)",
			panel{"10 calls a day", " MiB·h", pick(rssKeys...), func(t *target) float64 {
				return mibh(t, 10)
			}},
			panel{"1,000 calls a day", " MiB·h", pick(rssKeys...), func(t *target) float64 {
				return mibh(t, 1000)
			}}),
	}
	if err := tmpl.ExecuteTemplate(&md, "bench.md", data()); err != nil {
		return err
	}
	if *quick {
		if dir, err = os.MkdirTemp("", "dice-bench-out-"); err != nil {
			return err
		}
	}
	logf("the run took %s; writing bench.md, bench.svg and bench-day.svg in %s",
		time.Since(started).Round(time.Second), dir)
	files["bench.md"] = md.String()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// data is what the templates show: the machine, the run's settings, the tables.
func data() map[string]any {
	var sizes []string
	for _, path := range []string{"bin/01-always-on", "bin/02-socket-activated",
		"bin/03-idle-exit", "bin/04-accept-yes", "floor/04-accept-yes", "cfloor/04-accept-yes"} {
		if fi, err := os.Stat(filepath.Join(tmp, path)); err == nil {
			sizes = append(sizes, fmt.Sprintf("%s %.1f MB", path, float64(fi.Size())/1e6))
		}
	}
	return map[string]any{
		"Date": started.UTC().Format("2006-01-02 15:04 UTC"), "CPUs": runtime.NumCPU(),
		"CPU":    output("sh", "-c", "grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-"),
		"Kernel": output("uname", "-r"), "Go": runtime.Version(),
		"Systemd": strings.Fields(output("systemctl", "--version") + " ? ?")[1],
		"Flask": output(python, "-c", "import sys, importlib.metadata as m; "+
			"print(m.version('flask'), '(Python', sys.version.split()[0]+')')"),
		"Quick": *quick, "Load0": load0, "Load1": loadavg(), "Sizes": strings.Join(sizes, ", "),
		"Took": time.Since(started).Round(time.Second), "CGO": output("go", "env", "CGO_ENABLED"),
		"Requests": requests, "Idle": idle, "Starts": starts, "Rounds": rounds,
		"Clients": clients, "WarmDur": warmDur, "ConnDur": connDur,
		"Idle03": span(committedIdle("03-idle-exit")),
		"Idle05": span(committedIdle("05-socket-proxyd")),
		"Goals":  table("| goal | measured | |", nil, nil, goals()...),
		"RSS": table(fmt.Sprintf("| stage | started, no request yet | after the 1st request "+
			"| after %d requests | connection closed, %s later |", requests, idle),
			rssKeys, func(t *target) []string {
				return []string{t.rss[0].String(), t.rss[1].String(), t.rss[2].String(),
					t.rss[3].String()}
			}),
		"Cold": table("| | p50 | p95 | n | failed |", coldKeys, func(t *target) []string {
			return []string{ms(t.cold.p(50)), ms(t.cold.p(95)), fmt.Sprint(len(t.cold.times)),
				failures(t.cold)}
		}),
		"Warm": table("| | requests/s | ratio to 01 | to 02 | failed |", warmKeys,
			func(t *target) []string {
				return []string{fmt.Sprintf("%.0f", t.warm.rate()), ratio(t.warm, get("01").warm),
					ratio(t.warm, get("02").warm), failures(t.warm)}
			}),
		"Conn": table("| | connections/s | failed | ratio to the Go floor | to the C floor |",
			connKeys, func(t *target) []string {
				return []string{fmt.Sprintf("%.0f", t.conn.rate()), failures(t.conn),
					ratio(t.conn, get("f04").conn), ratio(t.conn, get("c04").conn)}
			}),
		"Day": table("| | active a day, 10 calls | MiB·h | active a day, 1,000 calls | MiB·h |",
			rssKeys, func(t *target) []string {
				return []string{span(active(t, 10)), num(mibh(t, 10)), span(active(t, 1000)),
					num(mibh(t, 1000))}
			}),
	}
}

// table is a Markdown table: header, a row per target of keys there is (its label,
// then cells(t)), then more rows.
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
	re := get("03").cold
	state, _ := get("03").m.Prop("dice.socket", "SubState")
	add("P5 stage 03 re-activated after every idle exit, 0 failures",
		re.failed == 0 && state == "listening", "%d of %d cold starts answered, each by a "+
			"new process; socket listening: %v", re.ok, re.ok+re.failed, state == "listening")
	return g
}

// active is how long t's processes run in a day of calls spread evenly over 24 h. A
// process that stays once started (01, 02, Flask) runs 24 h; one that exits runs per
// call its cold start (04: the connection, from connect to response) plus the idle
// time in its committed units (03, 05), or until the next call.
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

// committedIdle is the idle time in the committed units of stage: 03's -idle, 05's
// proxy's --exit-idle-time; 0 if none.
func committedIdle(stage string) (d time.Duration) {
	units, _ := filepath.Glob(filepath.Join(top, "units", stage, "*.service"))
	for _, unit := range units {
		data, _ := os.ReadFile(unit)
		if m := idleFlag.FindSubmatch(data); m != nil {
			d, _ = time.ParseDuration(string(m[1]))
		}
	}
	return d
}

var idleFlag = regexp.MustCompile(`(?m)^ExecStart=.*(?:-idle |--exit-idle-time=)(\S+)`)

// panel is one bar chart of an image: a bar per target, value(t) long.
type panel struct {
	title, unit string
	targets     []*target
	value       func(*target) float64
}

// svg is an image of panels side by side, as tall as the longest; Flask's bars orange.
func svg(title string, panels ...panel) string {
	bars := 0
	for _, p := range panels {
		bars = max(bars, len(p.targets))
	}
	s := fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="940" height="%d" `+
		`font-family="sans-serif" font-size="12">`+"\n"+`<rect width="100%%" height="100%%" `+
		`fill="white"/>`+"\n"+`<text x="10" y="22" font-size="15" font-weight="bold">%s</text>`+
		"\n", 74+26*bars, title)
	for i, p := range panels {
		longest := 0.0
		for _, t := range p.targets {
			longest = max(longest, p.value(t))
		}
		s += fmt.Sprintf(`<g transform="translate(%d 0)"><text y="52" font-weight="bold">%s`+
			"</text>\n", 10+470*i, p.title)
		for j, t := range p.targets {
			width := p.value(t) / longest * 200
			s += fmt.Sprintf(`<g transform="translate(0 %d)"><text x="180" y="13" `+
				`text-anchor="end">%s</text><rect x="185" width="%.1f" height="18" fill="%s"/>`+
				`<text x="189" dx="%.1f" y="13">%s%s</text></g>`+"\n", 64+26*j, t.label, width,
				map[bool]string{false: "#4292c6", true: "#fd8d3c"}[t.flask], width,
				num(p.value(t)), p.unit)
		}
		s += "</g>\n"
	}
	return s + "</svg>\n"
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
