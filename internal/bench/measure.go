package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"
)

// rss is the memory of a target at one moment: its processes and their RSS in KiB.
type rss struct{ procs, kib int }

func (r rss) String() string {
	if r.procs == 0 {
		return "no process, 0 KiB"
	}
	return fmt.Sprintf("%d process%s, %d KiB", r.procs, map[bool]string{true: "es"}[r.procs > 1],
		r.kib)
}

// report is what was measured, by target key.
type report struct {
	config
	started          time.Time
	load0, tmp       string // the load average before; the binaries' directory
	targets          map[string]*target
	rss              map[string][4]rss // started, 1st request, N requests, closed and idle
	cold, warm, conn map[string]sample
	idles            map[string]time.Duration // by stage: -idle, --exit-idle-time as committed
}

// rssKeys are the targets whose memory is measured, in the tables' order.
var rssKeys = []string{"01", "02", "03", "04", "05", "05f", "fs", "flask"}

// measureAll measures the targets and writes the results: the RSS table on stdout
// with -measure, else bench.md, bench.svg and bench-day.svg.
func (r *report) measureAll() (err error) {
	r.rss = map[string][4]rss{}
	for _, k := range rssKeys {
		t := r.targets[k]
		if r.rss[k], err = measureRSS(t, r.requests, r.idle); err != nil {
			return fmt.Errorf("RSS of %s: %w", t.label, err)
		}
	}
	if r.measure {
		return r.write(os.Stdout, "measure")
	}
	r.cold = r.alternate("cold starts", r.starts, cold, "02", "03", "04", "05", "05f", "fs",
		"f02", "f03", "f04", "c04", "flask")
	r.warm = r.alternate("warm throughput", r.rounds, func(t *target) sample {
		c := client(r.clients)
		defer c.CloseIdleConnections()
		if err := t.start(); err != nil {
			return result(err)
		}
		hammer(c, t.port, r.clients, 300*time.Millisecond) // warm-up
		s := hammer(c, t.port, r.clients, r.warmDur)
		if err := t.stop(); err != nil {
			s.add(result(err))
		}
		return s
	}, "01", "02", "03", "05", "05f", "fs", "flask")
	rounds := max(2, r.rounds)
	r.conn = r.alternate("stage 04 connections/s", rounds, func(t *target) sample {
		if err := waitFor(30*time.Second, t.label+" to be idle", t.idle); err != nil {
			return result(err)
		}
		s := hammer(peers(), t.port, r.clients, r.connDur/time.Duration(rounds))
		if !t.listening() {
			s.add(result(fmt.Errorf("dice.socket no longer listens after the load")))
		}
		return s
	}, "04", "04g", "f04", "c04")
	if r.quick && r.out == "docs" {
		if r.out, err = os.MkdirTemp("", "dice-bench-out-"); err != nil {
			return err
		}
	}
	logf("the run took %s; writing bench.md, bench.svg and bench-day.svg in %s",
		time.Since(r.started).Round(time.Second), r.out)
	for _, name := range []string{"bench.md", "bench.svg", "bench-day.svg"} {
		var b bytes.Buffer
		if err := errors.Join(r.write(&b, name), os.WriteFile(filepath.Join(r.out, name),
			b.Bytes(), 0o644)); err != nil {
			return err
		}
	}
	return nil
}

// measureRSS reads the RSS of t started, after one request, after n requests on one
// keep-alive connection, and idle after that connection closed.
func measureRSS(t *target, n int, idle time.Duration) (phases [4]rss, err error) {
	logf("RSS: %s", t.label)
	if err := t.start(); err != nil {
		return phases, err
	}
	time.Sleep(500 * time.Millisecond)
	phases[0] = t.rss()
	c := client(1)
	for i := range n {
		if err := roll(c, t.port); err != nil {
			return phases, err
		}
		if i == 0 {
			time.Sleep(200 * time.Millisecond)
			phases[1] = t.rss()
		}
	}
	time.Sleep(200 * time.Millisecond)
	phases[2] = t.rss()
	c.CloseIdleConnections()
	time.Sleep(idle)
	if err := waitFor(10*time.Second, t.label+" to exit", func() bool {
		return !t.exits() || t.idle()
	}); err != nil {
		return phases, err
	}
	time.Sleep(200 * time.Millisecond)
	phases[3] = t.rss()
	logf("  %s | %s | %s | %s", phases[0], phases[1], phases[2], phases[3])
	return phases, t.stop()
}

// cold times one first response with no process running: from the client's connect
// to the full response. Always-on Flask is not socket-activated: its time runs from
// `systemctl start` to its first full response.
func cold(t *target) sample {
	err := errors.Join(t.stop(), waitFor(10*time.Second, t.label+" to have no process", t.idle))
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
}

// alternate measures the targets of keys there are in turn, rounds times: the sums.
func (r *report) alternate(what string, rounds int, measure func(*target) sample,
	keys ...string) map[string]sample {
	logf("%s: %d rounds, alternating", what, rounds)
	var targets []*target
	for _, k := range keys {
		if t := r.targets[k]; t != nil {
			targets = append(targets, t)
		}
	}
	total := map[string]sample{}
	for i := range rounds {
		for j := range targets {
			t := targets[(i+j)%len(targets)]
			s := total[t.key]
			s.add(measure(t))
			total[t.key] = s
		}
	}
	for _, t := range targets {
		s := total[t.key]
		logf("  %-28s %5d ok, %8.0f/s, p50 %s, %d failed %v", t.label, s.ok, s.rate(),
			ms(s.p(50)), s.failed, s.err)
	}
	return total
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
	c := client(0)
	var n atomic.Uint32
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
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// sample is what measuring a target gave: successes (with their times, for cold
// starts), failures and the first error, and the time it took.
type sample struct {
	ok, failed int
	elapsed    time.Duration
	times      []time.Duration
	err        error
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

// result is one request's sample, without its time.
func result(err error) sample {
	if err != nil {
		return sample{failed: 1, err: err}
	}
	return sample{ok: 1}
}

// hammer sends GET /roll to port with c from workers goroutines for d.
func hammer(c *http.Client, port, workers int, d time.Duration) (total sample) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
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

// reportTemplates are the texts of -measure's output, bench.md and bench.svg.
//
//go:embed report.tmpl
var reportTemplates string

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

// rows are table rows: for each target of keys there is, its label and cells(key).
func (r *report) rows(cells func(k string) []string, keys ...string) (rows [][]string) {
	for _, k := range keys {
		if t := r.targets[k]; t != nil {
			rows = append(rows, append([]string{t.label}, cells(k)...))
		}
	}
	return rows
}

// write executes the template name ("measure" or a file's name) on the results.
func (r *report) write(w io.Writer, name string) error {
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	_, cpu, _ := strings.Cut(string(cpuinfo), "model name")
	cpu, _, _ = strings.Cut(strings.TrimLeft(cpu, "\t :"), "\n")
	var sizes []string
	for _, path := range []string{"bin/01-always-on", "bin/02-socket-activated",
		"bin/03-idle-exit", "bin/04-accept-yes", "floor/04-accept-yes", "cfloor/04-accept-yes"} {
		if fi, err := os.Stat(filepath.Join(r.tmp, path)); err == nil {
			sizes = append(sizes, fmt.Sprintf("%s %.1f MB", path, float64(fi.Size())/1e6))
		}
	}
	d := map[string]any{"Date": r.started.UTC().Format("2006-01-02 15:04 UTC"), "CPU": cpu,
		"CPUs": runtime.NumCPU(), "Go": runtime.Version(), "Requests": r.requests, "Idle": r.idle,
		"Starts": r.starts, "Rounds": r.rounds, "Clients": r.clients, "WarmDur": r.warmDur,
		"ConnDur": r.connDur, "Quick": r.quick, "Load0": r.load0, "Load1": loadavg(),
		"Sizes": strings.Join(sizes, ", "), "Took": time.Since(r.started).Round(time.Second),
		"Systemd": field(output("systemctl", "--version"), 1), "Kernel": output("uname", "-r"),
		"CGO": output("go", "env", "CGO_ENABLED"), "Goals": r.goals(), "SVG": r.charts(),
		"DaySVG": r.dayChart(),
		"Flask": output(python, "-c", "import sys, importlib.metadata as m; "+
			"print(m.version('flask'), '(Python', sys.version.split()[0]+')')"),
		"RSS": r.rows(func(k string) []string {
			return []string{r.rss[k][0].String(), r.rss[k][1].String(), r.rss[k][2].String(),
				r.rss[k][3].String()}
		}, rssKeys...),
		"Cold": r.rows(func(k string) []string {
			s := r.cold[k]
			return []string{ms(s.p(50)), ms(s.p(95)), fmt.Sprint(len(s.times)), failures(s)}
		}, "02", "03", "04", "05", "05f", "fs", "f02", "f03", "f04", "c04", "flask"),
		"Warm": r.rows(func(k string) []string {
			s := r.warm[k]
			return []string{fmt.Sprintf("%.0f", s.rate()), ratio(s, r.warm["01"]),
				ratio(s, r.warm["02"]), failures(s)}
		}, "01", "02", "03", "05", "05f", "fs", "flask"),
		"Day": r.rows(func(k string) (cells []string) {
			for _, calls := range []int{10, 1000} {
				active, mibh := r.day(k, calls)
				cells = append(cells, span(active), num(mibh))
			}
			return cells
		}, rssKeys...),
		"Idle03": span(r.idles["03-idle-exit"]), "Idle05": span(r.idles["05-socket-proxyd"]),
		"Conn": r.rows(func(k string) []string {
			s := r.conn[k]
			return []string{fmt.Sprintf("%.0f", s.rate()), failures(s), ratio(s, r.conn["f04"]),
				ratio(s, r.conn["c04"])}
		}, "04", "04g", "f04", "c04")}
	row := func(cells []string) string { return "| " + strings.Join(cells, " | ") + " |\n" }
	t := template.Must(template.New("").Funcs(template.FuncMap{"row": row}).Parse(reportTemplates))
	return t.ExecuteTemplate(w, name, d)
}

// goals are the project's goals, each as goal, measured figures, verdict.
func (r *report) goals() (g [][]string) {
	add := func(goal string, met bool, format string, args ...any) {
		g = append(g, []string{goal, fmt.Sprintf(format, args...),
			map[bool]string{true: "**met**", false: "**missed**"}[met]})
	}
	idle := 0
	for _, k := range []string{"02", "03", "04", "05", "05f"} {
		idle += r.rss[k][0].procs + map[bool]int{true: r.rss[k][3].procs}[r.targets[k].exits()]
	}
	add("P1 stages 02–05 idle: no process, 0 KiB", idle == 0, "%d processes before the first "+
		"request (02–05) and after idle or close (03–05)", idle)
	goMax, flask := 0, r.rss["flask"][2].kib
	for _, k := range []string{"01", "02", "03", "04"} {
		goMax = max(goMax, r.rss[k][1].kib, r.rss[k][2].kib)
	}
	add("P1 Go active RSS ≤ 0.25× Flask's", goMax*4 <= flask, "largest Go stage %d KiB / Flask "+
		"%d KiB (after %d requests) = %.2f×", goMax, flask, r.requests, float64(goMax)/float64(flask))
	fl := r.cold["fs"].p(50) // Flask timed as the stages are, from the client's connect
	for _, k := range []string{"02", "03", "04"} {
		s, f := r.cold[k], r.cold["f"+k].p(50)
		x, y := float64(s.p(50))/float64(f), float64(s.p(50))/float64(fl)
		add("P2 "+k+" cold ≤ 1.5× floor, ≤ 0.1× socket-activated Flask", x <= 1.5 && y <= 0.1 &&
			s.failed == 0,
			"p50 %s vs floor %s = %.2f×; vs Flask %s = %.3f×", ms(s.p(50)), ms(f), x, ms(fl), y)
	}
	for _, k := range []string{"02", "03"} {
		w, base := r.warm[k], r.warm["01"]
		add("P3 warm throughput "+k+"/01 ≥ 0.95", w.rate() >= 0.95*base.rate() && w.failed == 0,
			"%.0f / %.0f req/s = %.2f", w.rate(), base.rate(), w.rate()/base.rate())
	}
	s, f, c := r.conn["04"], r.conn["f04"], r.conn["c04"]
	add("P4 stage 04 ≥ 0.9× the Go floor's connections/s, 0 failures", s.rate() >= 0.9*f.rate() &&
		s.failed == 0, "%.0f / %.0f conn/s = %.2f×, %d failed", s.rate(), f.rate(),
		s.rate()/f.rate(), s.failed)
	if c.ok > 0 {
		add("P4 stage 04 ≥ 0.85× the C floor's connections/s", s.rate() >= 0.85*c.rate(),
			"%.0f / %.0f conn/s = %.2f× (with GOMAXPROCS=1: %.2f×)", s.rate(), c.rate(),
			s.rate()/c.rate(), r.conn["04g"].rate()/c.rate())
	}
	re, listening := r.cold["03"], r.targets["03"].listening()
	add("P5 stage 03 re-activated after every idle exit, 0 failures", re.failed == 0 &&
		listening, "%d of %d cold starts answered, each by a new process; socket listening: %v",
		re.ok, re.ok+re.failed, listening)
	return g
}

// chart is a bar chart at x of bench.svg or bench-day.svg: a bar per target of keys
// there is, value(key) long, Flask's dice.py in orange.
func (r *report) chart(x int, title, unit string, value func(string) float64,
	keys ...string) map[string]any {
	var bars []map[string]any
	top := 0.0
	for _, k := range keys {
		top = max(top, value(k))
	}
	for _, k := range keys {
		if t := r.targets[k]; t != nil {
			bars = append(bars, map[string]any{"Label": t.label, "Y": 64 + 26*len(bars),
				"Width": value(k) / top * 200, "Flask": t.python, "Value": num(value(k)) + unit})
		}
	}
	return map[string]any{"X": x, "Title": title, "Bars": bars}
}

// svg is an image of charts side by side, as tall as the longest.
func svg(title string, charts ...map[string]any) map[string]any {
	bars := 0
	for _, c := range charts {
		bars = max(bars, len(c["Bars"].([]map[string]any)))
	}
	return map[string]any{"Title": title, "Charts": charts, "Height": 74 + 26*bars}
}

// charts are bench.svg: RSS after r.requests requests, cold start p50.
func (r *report) charts() map[string]any {
	return svg(fmt.Sprintf("socket-dice: memory and cold start (%s, %d CPUs, %s)",
		r.started.UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version()),
		r.chart(10, fmt.Sprintf("RSS after %d requests", r.requests), " MiB",
			func(k string) float64 { return float64(r.rss[k][2].kib) / 1024 }, rssKeys...),
		r.chart(480, "Cold first response, p50", " ms", func(k string) float64 {
			return float64(r.cold[k].p(50)) / 1e6
		}, "02", "03", "04", "05", "05f", "fs", "f02", "f03", "f04", "c04", "flask"))
}

// dayChart is bench-day.svg: memory × time a day, for 10 and for 1,000 calls.
func (r *report) dayChart() map[string]any {
	var charts []map[string]any
	for i, calls := range []int{10, 1000} {
		charts = append(charts, r.chart(10+470*i, []string{"10", "1,000"}[i]+" calls a day",
			" MiB·h", func(k string) float64 { _, v := r.day(k, calls); return v }, rssKeys...))
	}
	return svg("Memory × time a day, calls spread over the day (MiB·h)", charts...)
}

// day is what target k holds in a day of calls spread evenly over 24 h: how long its
// processes run, and memory × time in MiB·h. A process that stays once started (01,
// 02, Flask) runs 24 h, with its RSS after the 1st request for 10 calls, after
// r.requests for more. One that exits runs per call its cold start (04: the connection,
// from connect to response) plus the idle time in its committed units (03, 05), or
// until the next call, with its RSS after the 1st request.
func (r *report) day(k string, calls int) (active time.Duration, mibh float64) {
	t, phase := r.targets[k], 1
	switch {
	case !t.exits():
		active = 24 * time.Hour
		phase = map[bool]int{true: 2, false: 1}[calls > 10]
	default:
		gap := 24 * time.Hour / time.Duration(calls)
		active = time.Duration(calls) * min(gap, r.cold[k].p(50)+r.idles[t.stage])
	}
	return active, float64(r.rss[k][phase].kib) / 1024 * active.Hours()
}

// committedIdle is the idle time in the committed units of stage: the -idle or
// --exit-idle-time of its ExecStart=, 0 if none.
func committedIdle(top, stage string) time.Duration {
	units, _ := filepath.Glob(filepath.Join(top, "units", stage, "*.service"))
	for _, unit := range units {
		data, _ := os.ReadFile(unit)
		if m := idleFlag.FindSubmatch(data); m != nil {
			d, _ := time.ParseDuration(string(m[1]))
			return d
		}
	}
	return 0
}

var idleFlag = regexp.MustCompile(`(?m)^ExecStart=.*(?:-idle |--exit-idle-time=)(\S+)`)
