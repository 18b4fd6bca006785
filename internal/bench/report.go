package main

import (
	"fmt"
	"html"
	"math"
	"os/exec"
	"strings"
	"time"
)

var phaseNames = [4]string{"started, no request yet", "after the 1st request",
	"after %d requests", "connection closed, then -idle"}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

func (r *report) coldOf(key string) *coldRow {
	for _, c := range r.cold {
		if c.t.key == key {
			return c
		}
	}
	return &coldRow{t: &target{}}
}

func (r *report) rssOf(key string) rssRow {
	for _, row := range r.rss {
		if row.t.key == key {
			return row
		}
	}
	return rssRow{t: &target{}}
}

func rowOf(rows []*rateRow, key string) *rateRow {
	for _, row := range rows {
		if row.t.key == key {
			return row
		}
	}
	return &rateRow{t: &target{}, secs: 1}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return " (first error: " + err.Error() + ")"
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	v := r.versions
	mode := "full run"
	if r.quick {
		mode = "**quick smoke run: numbers not meaningful**"
	}
	p("# Benchmark: the four stages side by side")
	p("")
	p("Written by `make bench` (`go run ./internal/bench`), %s, on %s: %s CPUs (%s), "+
		"Linux %s, %s, systemd %s, Flask %s (Python %s, Debian's python3-flask). "+
		"Load average %s before, %s after; the run took %s. Binaries built with "+
		"`-ldflags=%q`, CGO_ENABLED=%s: %s.", mode, r.started.UTC().Format("2006-01-02 15:04 UTC"), v["cpus"],
		v["cpu"], v["kernel"], v["go"], v["systemd"], v["flask"], v["python"], r.load0, r.load1,
		r.took.Round(time.Second), r.ldflags, cgo(), r.sizeText())
	p("")
	p("Every service runs under the same real systemd (a private `systemd --user` of "+
		"`scripts/user-manager`), from the unit files in `units/`, with stage 03's `-idle` "+
		"set to %s. The **floor** is `internal/bench/floor`: a Go program without net/http "+
		"that takes fd 3, answers one request with a fixed response and exits, started by "+
		"the same unit files as the stage it is compared with. Flask is the blog post's "+
		"`dice.py`, verbatim, served by `flask run` (its development server: one process, "+
		"a thread per request, which closes the connection after each response).", r.idle)
	p("")
	p("![RSS per stage and phase; cold first response per stage](bench.svg)")
	p("")

	p("## Goals")
	p("")
	p("| goal | measured | |")
	p("|---|---|---|")
	for _, g := range r.goals() {
		p("| %s | %s | %s |", g[0], g[1], g[2])
	}
	p("")

	p("## Memory (RSS of the unit's processes, KiB)")
	p("")
	p("| | %s | %s | %s | %s |", phaseNames[0], phaseNames[1],
		fmt.Sprintf(phaseNames[2], r.requests), phaseNames[3])
	p("|---|---|---|---|---|")
	for _, row := range r.rss {
		p("| %s | %s | %s | %s | %s |", row.t.label, row.phases[0], row.phases[1],
			row.phases[2], row.phases[3])
	}
	p("")
	p("Requests go one at a time over one keep-alive connection (Flask: one connection " +
		"each). RSS is VmRSS, what `ps -o rss=` shows, of the unit's main process(es).")
	p("")

	p("## Cold first response (connection to full response, no process running)")
	p("")
	p("| | p50 | p95 | n | failed |")
	p("|---|---|---|---|---|")
	for _, c := range r.cold {
		p("| %s | %s | %s | %d | %d%s |", c.t.label, ms(percentile(c.times, 0.5)),
			ms(percentile(c.times, 0.95)), len(c.times), c.failed, errText(c.err))
	}
	p("")
	p("Targets alternate: each of the %d rounds measures every one once. Before each "+
		"measurement the service is stopped (02), has exited idle (03) or after its "+
		"request (04, floors). Flask's figure is exec to first response: from systemd's "+
		"ExecMainStartTimestampMonotonic, polling the port.", r.cold[0].failed+len(r.cold[0].times))
	p("")

	p("## Warm throughput (keep-alive, %d clients)", r.workers)
	p("")
	p("| | requests/s | median of rounds | ratio to 01 | failed |")
	p("|---|---|---|---|---|")
	base := rowOf(r.warm, "01").rate()
	for _, w := range r.warm {
		p("| %s | %.0f | %.0f | %.2f | %d%s |", w.t.label, w.rate(), median(w.rates),
			w.rate()/base, w.failed, errText(w.err))
	}
	p("")
	p("%d alternating rounds of %s each (after a 0.3 s warm-up), one Go net/http client, "+
		"GET /roll; client and server share the %s CPUs. Flask closes every connection, so "+
		"its clients reconnect for each request.", r.rounds, r.settings.warm, v["cpus"])
	p("")

	p("## Stage 04: new connections per second (a process each)")
	p("")
	p("| | connections/s | failed | socket still listening | ratio to floor |")
	p("|---|---|---|---|---|")
	floor := rowOf(r.conns, "f04").rate()
	for _, c := range r.conns {
		p("| %s | %.0f | %d%s | %v | %.2f |", c.t.label, c.rate(), c.failed, errText(c.err),
			c.listen, c.rate()/floor)
	}
	p("")
	p("%d clients, each opening a connection, GET /roll with `Connection: close`, reading "+
		"the response; %s per target in alternating rounds.", r.workers, r.connDur)
	p("")

	rc := r.react.c
	p("## Stage 03: re-activations")
	p("")
	p("One request at a time, each %s after the previous response (-idle %s): %d requests "+
		"in %s, answered by %d distinct processes (Dice-Pid): **%.1f re-activations/s**, "+
		"%d failed%s; the socket still listening afterwards: %v.",
		r.idle+20*time.Millisecond, r.idle, rc.ok+rc.failed, rc.elapsed.Round(time.Millisecond),
		r.react.pids, r.reactRate(), rc.failed, errText(rc.firstErr), r.react.listen)
	p("")
	return b.String()
}

func (r *report) sizeText() string {
	var parts []string
	for _, k := range []string{"01-always-on", "02-socket-activated", "03-idle-exit",
		"04-accept-yes", "floor"} {
		parts = append(parts, fmt.Sprintf("%s %.1f MB", k, float64(r.sizes[k])/1e6))
	}
	return strings.Join(parts, ", ")
}

func (r *report) reactRate() float64 {
	return float64(r.react.pids) / r.react.c.elapsed.Seconds()
}

// goals are the P-goals, each as goal, measured figure, verdict.
func (r *report) goals() [][3]string {
	var g [][3]string
	// P1: no process while idle; active Go RSS vs Flask's.
	idle := []string{}
	idleOK := true
	for _, c := range []struct {
		key string
		i   int
	}{{"02", 0}, {"03", 0}, {"03", 3}, {"04", 0}, {"04", 3}} {
		ph := r.rssOf(c.key).phases[c.i]
		idleOK = idleOK && ph.procs == 0 && ph.kib == 0
		idle = append(idle, fmt.Sprintf("%s %s: %s", c.key, []string{"before any request", "",
			"", "after idle/close"}[c.i], ph))
	}
	g = append(g, [3]string{"P1 stages 02–04 idle: no process, 0 KiB",
		strings.Join(idle, "; "), verdict(idleOK)})
	goMax := 0
	for _, k := range []string{"01", "02", "03", "04"} {
		goMax = max(goMax, r.rssOf(k).phases[2].kib, r.rssOf(k).phases[1].kib)
	}
	flask := r.rssOf("flask").phases[2].kib
	ratio := float64(goMax) / float64(max(flask, 1))
	g = append(g, [3]string{"P1 Go active RSS ≤ 0.25× Flask's", fmt.Sprintf(
		"largest Go stage %d KiB / Flask %d KiB (after %d requests) = %.2f×", goMax, flask,
		r.requests, ratio), verdict(ratio <= 0.25)})
	// P2: cold start vs floor and Flask.
	flaskCold := percentile(r.coldOf("flask").times, 0.5)
	for _, k := range []string{"02", "03", "04"} {
		c, f := r.coldOf(k), r.coldOf("f"+k)
		p50, f50 := percentile(c.times, 0.5), percentile(f.times, 0.5)
		x, y := float64(p50)/float64(max(f50, 1)), float64(p50)/float64(max(flaskCold, 1))
		g = append(g, [3]string{fmt.Sprintf("P2 %s cold ≤ 1.5× floor, ≤ 0.1× Flask", k),
			fmt.Sprintf("p50 %s vs floor %s = %.2f×; vs Flask %s = %.3f× (p95 %s, floor %s)",
				ms(p50), ms(f50), x, ms(flaskCold), y, ms(percentile(c.times, 0.95)),
				ms(percentile(f.times, 0.95))),
			verdict(x <= 1.5 && y <= 0.1 && c.failed == 0)})
	}
	// P3: warm throughput ratios.
	base := rowOf(r.warm, "01")
	for _, k := range []string{"02", "03"} {
		w := rowOf(r.warm, k)
		x := w.rate() / base.rate()
		g = append(g, [3]string{fmt.Sprintf("P3 warm throughput %s/01 ≥ 0.95", k),
			fmt.Sprintf("%.0f / %.0f req/s = %.2f", w.rate(), base.rate(), x),
			verdict(x >= 0.95 && w.failed == 0)})
	}
	// P4: stage 04 connections/s vs floor.
	s, f := rowOf(r.conns, "04"), rowOf(r.conns, "f04")
	x := s.rate() / f.rate()
	g = append(g, [3]string{"P4 stage 04 ≥ 0.9× floor connections/s, 0 failures",
		fmt.Sprintf("%.0f / %.0f conn/s = %.2f×, %d failed (floor %d)", s.rate(), f.rate(), x,
			s.failed, f.failed), verdict(x >= 0.9 && s.failed == 0 && s.listen)})
	// P5: re-activations.
	g = append(g, [3]string{"P5 stage 03 ≥ 2 re-activations/s, 0 failures",
		fmt.Sprintf("%.1f/s, %d failed, socket listening: %v", r.reactRate(), r.react.c.failed,
			r.react.listen),
		verdict(r.reactRate() >= 2 && r.react.c.failed == 0 && r.react.listen)})
	return g
}

// svg draws two bar charts: RSS per stage and phase, and cold first response p50.
func (r *report) svg() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	const width, height = 960, 470
	colors := [4]string{"#9ecae1", "#4292c6", "#08519c", "#fd8d3c"}
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" `+
		`font-family="sans-serif" font-size="12">`, width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>`)
	w(`<text x="10" y="20" font-size="15" font-weight="bold">socket-dice: memory and cold ` +
		`start per stage</text>`)
	w(`<text x="10" y="38" fill="#555">%s, %s CPUs, %s, systemd %s, Flask %s</text>`,
		r.started.UTC().Format("2006-01-02"), r.versions["cpus"], r.versions["go"],
		r.versions["systemd"], r.versions["flask"])

	// Left: RSS in MiB, grouped bars.
	x0, y0, chartH, chartW := 60.0, 420.0, 320.0, 470.0
	maxKiB := 1
	for _, row := range r.rss {
		for _, ph := range row.phases {
			maxKiB = max(maxKiB, ph.kib)
		}
	}
	top := math.Ceil(float64(maxKiB)/1024/5) * 5
	w(`<text x="%g" y="70" font-weight="bold">RSS (MiB) of the unit's processes</text>`, x0)
	for v := 0.0; v <= top; v += 5 {
		y := y0 - v/top*chartH
		w(`<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#ddd"/>`, x0, y, x0+chartW, y)
		w(`<text x="%g" y="%.1f" text-anchor="end">%g</text>`, x0-5, y+4, v)
	}
	group := chartW / float64(max(len(r.rss), 1))
	bar := (group - 16) / 4
	for i, row := range r.rss {
		gx := x0 + float64(i)*group + 8
		for j, ph := range row.phases {
			h := float64(ph.kib) / 1024 / top * chartH
			x := gx + float64(j)*bar
			w(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, x, y0-h,
				bar-2, h, colors[j])
			label := fmt.Sprintf("%.1f", float64(ph.kib)/1024)
			if ph.kib >= 10*1024 {
				label = fmt.Sprintf("%.0f", float64(ph.kib)/1024)
			}
			if ph.procs == 0 {
				label = "none"
			}
			w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>`,
				x+bar/2-1, y0-h-3, label)
		}
		// "02-socket-activated" on two lines: "02" and "socket-activated".
		first, second, _ := strings.Cut(strings.SplitN(row.t.label, " ", 2)[0], "-")
		w(`<text x="%.1f" y="%g" text-anchor="middle"><tspan>%s</tspan>`+
			`<tspan x="%.1f" dy="14" font-size="10">%s</tspan></text>`, gx+2*bar, y0+16,
			html.EscapeString(first), gx+2*bar, html.EscapeString(second))
	}
	w(`<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#333"/>`, x0, y0, x0+chartW, y0)
	for j := range phaseNames {
		name := phaseNames[j]
		if j == 2 {
			name = fmt.Sprintf(name, r.requests)
		}
		lx := x0 + float64(j%2)*235
		ly := 86.0 + float64(j/2)*15
		w(`<rect x="%g" y="%g" width="10" height="10" fill="%s"/>`, lx, ly-9, colors[j])
		w(`<text x="%g" y="%g" font-size="11">%s</text>`, lx+14, ly, html.EscapeString(name))
	}

	// Right: cold first response p50 (bars) and p95 (tick), log scale 1 ms .. 10 s.
	cx0, cx1 := 700.0, 940.0
	w(`<text x="570" y="70" font-weight="bold">Cold first response, p50 (p95 tick), log scale</text>`)
	logPos := func(d time.Duration) float64 {
		m := math.Max(float64(d)/1e6, 1)
		return cx0 + math.Log10(m)/4*(cx1-cx0)
	}
	for _, v := range []float64{1, 10, 100, 1000, 10000} {
		x := logPos(time.Duration(v * 1e6))
		w(`<line x1="%.1f" y1="100" x2="%.1f" y2="%g" stroke="#ddd"/>`, x, x, y0)
		w(`<text x="%.1f" y="%g" text-anchor="middle">%s</text>`, x, y0+16,
			map[float64]string{1: "1 ms", 10: "10 ms", 100: "100 ms", 1000: "1 s", 10000: "10 s"}[v])
	}
	rowH := (y0 - 110) / float64(max(len(r.cold), 1))
	for i, c := range r.cold {
		y := 110 + float64(i)*rowH
		p50, p95 := percentile(c.times, 0.5), percentile(c.times, 0.95)
		fill := "#08519c"
		switch {
		case c.t.key == "flask":
			fill = "#fd8d3c"
		case strings.HasPrefix(c.t.key, "f"):
			fill = "#999"
		}
		w(`<text x="%g" y="%.1f" text-anchor="end">%s</text>`, cx0-6, y+rowH/2+4,
			html.EscapeString(c.t.label))
		w(`<rect x="%g" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, cx0, y+4,
			logPos(p50)-cx0, rowH-8, fill)
		w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-width="2"/>`,
			logPos(p95), y+4, logPos(p95), y+rowH-4)
		w(`<text x="%.1f" y="%.1f" font-size="11" fill="#000">%s</text>`,
			math.Min(logPos(p95)+4, cx1-40), y+rowH/2+4, ms(p50))
	}
	w(`<line x1="%g" y1="100" x2="%g" y2="%g" stroke="#333"/>`, cx0, cx0, y0)
	w(`</svg>`)
	return b.String()
}

// cgo is CGO_ENABLED as go build sees it: 1 links the stages against libc.
func cgo() string {
	out, err := exec.Command("go", "env", "CGO_ENABLED").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
