package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// phase is the memory of a target at one moment: its processes and their RSS.
type phase struct{ procs, kib int }

func (p phase) String() string {
	switch p.procs {
	case 0:
		return "no process, 0 KiB"
	case 1:
		return fmt.Sprintf("1 process, %d KiB", p.kib)
	}
	return fmt.Sprintf("%d processes, %d KiB", p.procs, p.kib)
}

type rssRow struct {
	t      *target
	phases [4]phase // started, 1st request, N requests, later
}

type coldRow struct {
	t      *target
	times  []time.Duration
	failed int
	err    error
}

type rateRow struct {
	t      *target
	rates  []float64 // per round
	ok     int64
	failed int64
	secs   float64
	err    error
	listen bool // the socket still listened afterwards
}

func (r *rateRow) add(c counts) {
	r.rates = append(r.rates, c.rate())
	r.ok += c.ok
	r.failed += c.failed
	r.secs += c.elapsed.Seconds()
	if r.err == nil {
		r.err = c.firstErr
	}
}

func (r *rateRow) rate() float64 { return float64(r.ok) / r.secs }

type report struct {
	settings
	started      time.Time
	took         time.Duration
	load0, load1 string
	versions     map[string]string
	sizes        map[string]int64
	rss          []rssRow
	cold         []*coldRow
	warm         []*rateRow
	conns        []*rateRow
	react        struct {
		pids   int
		c      counts
		listen bool
	}
}

// portListening tells whether something listens on 127.0.0.1:port (/proc/net/tcp).
func portListening(port int) bool {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return false
	}
	defer f.Close()
	want := fmt.Sprintf("0100007F:%04X 00000000:0000 0A", port)
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.Contains(s.Text(), want) {
			return true
		}
	}
	return false
}

func (t *target) phase() phase {
	var p phase
	for _, pid := range t.pids() {
		p.procs++
		p.kib += rssKiB(pid)
	}
	return p
}

// measureRSS is what scripts/measure-rss does, for one target.
func (r *report) measureRSS(t *target, s settings) error {
	logf("RSS: %s", t.label)
	if t.socket == "" {
		if _, err := systemctl("start", t.service); err != nil {
			return err
		}
	}
	if err := waitFor(20*time.Second, "a listening port", func() bool {
		return portListening(t.port)
	}); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	row := rssRow{t: t}
	row.phases[0] = t.phase()
	client := keepAliveClient(1)
	url := "http://127.0.0.1:" + strconv.Itoa(t.port) + "/roll"
	for i := 0; i < s.requests; i++ {
		if err := get(client, url); err != nil {
			return err
		}
		if i == 0 {
			time.Sleep(200 * time.Millisecond)
			row.phases[1] = t.phase()
		}
	}
	time.Sleep(200 * time.Millisecond)
	row.phases[2] = t.phase()
	client.CloseIdleConnections()
	time.Sleep(s.idle)
	if t.key == "03" || t.key == "04" {
		if err := waitFor(10*time.Second, t.label+" to exit", t.noProcess); err != nil {
			return err
		}
	}
	time.Sleep(200 * time.Millisecond)
	row.phases[3] = t.phase()
	logf("  %s | %s | %s | %s", row.phases[0], row.phases[1], row.phases[2], row.phases[3])
	r.rss = append(r.rss, row)
	if t.key != "03" && t.key != "04" {
		_, err := systemctl("stop", t.service)
		return err
	}
	return nil
}

// measureCold times first responses with no process running, alternating targets.
func (r *report) measureCold(targets []*target, flask *target, s settings) error {
	var rows []*coldRow
	for _, t := range targets {
		if t.socket != "" && t.key != "01" {
			rows = append(rows, &coldRow{t: t})
		}
	}
	rows = append(rows, &coldRow{t: flask})
	logf("cold starts: %d per target, alternating", s.cold)
	for i := 0; i < s.cold; i++ {
		for j := range rows {
			row := rows[(i+j)%len(rows)]
			d, err := coldOnce(row.t)
			if err != nil {
				row.failed++
				if row.err == nil {
					row.err = err
				}
				continue
			}
			row.times = append(row.times, d)
		}
	}
	_, _ = systemctl("stop", flask.service)
	for _, row := range rows {
		logf("  %-28s p50 %7s  p95 %7s  failed %d %v", row.t.label,
			percentile(row.times, 0.5).Round(10*time.Microsecond),
			percentile(row.times, 0.95).Round(10*time.Microsecond), row.failed, row.err)
	}
	r.cold = rows
	return nil
}

// coldOnce makes sure no process of t runs, then times one first response. For Flask,
// it is exec to first response: systemd's ExecMainStartTimestampMonotonic to the end
// of the first response, polling the port from the start.
func coldOnce(t *target) (time.Duration, error) {
	if t.key == "02" || t.key == "flask" {
		if _, err := systemctl("stop", t.service); err != nil {
			return 0, err
		}
	}
	if err := waitFor(10*time.Second, t.label+" to have no process", t.noProcess); err != nil {
		return 0, err
	}
	time.Sleep(20 * time.Millisecond)
	if t.key != "flask" {
		return timedRequest(t.port)
	}
	if _, err := systemctl("start", "--no-block", t.service); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := oneRequest(t.port)
		if err == nil {
			break
		}
		if !isRefused(err) || time.Now().After(deadline) {
			return 0, err
		}
		time.Sleep(time.Millisecond)
	}
	end := monotonic()
	usec, err := strconv.ParseInt(show(t.service, "ExecMainStartTimestampMonotonic"), 10, 64)
	if err != nil || usec == 0 {
		return 0, fmt.Errorf("no ExecMainStartTimestampMonotonic for %s", t.service)
	}
	return end - time.Duration(usec)*time.Microsecond, nil
}

// measureWarm is keep-alive throughput, rounds alternating between the targets.
func (r *report) measureWarm(targets []*target, s settings) error {
	rows := make([]*rateRow, len(targets))
	for i, t := range targets {
		rows[i] = &rateRow{t: t}
	}
	logf("warm throughput: %d clients, %d rounds of %s, alternating", s.workers, s.rounds, s.warm)
	for i := 0; i < s.rounds; i++ {
		for j := range rows {
			row := rows[(i+j)%len(rows)]
			row.add(throughput(row.t.port, s.workers, 300*time.Millisecond, s.warm))
		}
	}
	for _, row := range rows {
		logf("  %-28s %8.0f req/s (median of rounds %.0f), failed %d %v", row.t.label,
			row.rate(), median(row.rates), row.failed, row.err)
	}
	r.warm = rows
	return nil
}

// measureConns is new connections per second, each served by a new process.
func (r *report) measureConns(stage, floor *target, s settings) error {
	rows := []*rateRow{{t: stage}, {t: floor}}
	rounds := max(2, s.rounds)
	logf("stage 04 connections/s: %d clients, %s per target in %d alternating rounds",
		s.workers, s.connDur, rounds)
	for i := 0; i < rounds; i++ {
		for j := range rows {
			row := rows[(i+j)%len(rows)]
			if err := waitFor(30*time.Second, row.t.label+" to have no process",
				row.t.noProcess); err != nil {
				return err
			}
			row.add(connections(row.t.port, s.workers, s.connDur/time.Duration(rounds)))
		}
	}
	for _, row := range rows {
		row.listen = row.t.listening()
		logf("  %-28s %8.0f conn/s, failed %d, socket listening %v %v", row.t.label,
			row.rate(), row.failed, row.listen, row.err)
	}
	r.conns = rows
	return nil
}

// measureReactivations: requests spaced just past -idle, each served by a new process.
func (r *report) measureReactivations(t *target, s settings) error {
	if err := waitFor(10*time.Second, t.label+" to exit", t.noProcess); err != nil {
		return err
	}
	logf("stage 03 re-activations for %s, requests %s apart (-idle %s)", s.reDur,
		s.idle+20*time.Millisecond, s.idle)
	r.react.pids, r.react.c = reactivations(t.port, s.idle+20*time.Millisecond, s.reDur)
	r.react.listen = t.listening()
	logf("  %d processes in %s: %.1f/s, %d failed, socket listening %v %v", r.react.pids,
		r.react.c.elapsed.Round(time.Millisecond),
		float64(r.react.pids)/r.react.c.elapsed.Seconds(), r.react.c.failed, r.react.listen,
		r.react.c.firstErr)
	return nil
}
