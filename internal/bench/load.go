package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"socket-dice/dice/dicetest"
)

// measureRSS reads the RSS of t started, after one request, after n requests on one
// keep-alive connection, and after that connection closed (once its processes have
// exited, for a target whose service exits by itself).
func (t *target) measureRSS() error {
	logf("RSS: %s", t.label)
	c := t.client(1)
	err := t.start()
	t.rss[0] = t.memory()
	for i := 0; i < requests && err == nil; i++ {
		if err = roll(c, t); i == 0 {
			t.rss[1] = t.memory()
		}
	}
	t.rss[2] = t.memory()
	c.CloseIdleConnections()
	if err == nil && t.exits {
		err = waitFor(30*time.Second, t.label+" to exit", t.quiet)
	}
	t.rss[3] = t.memory()
	logf("  %s | %s | %s | %s", t.rss[0], t.rss[1], t.rss[2], t.rss[3])
	if !t.exits {
		err = errors.Join(err, t.stop())
	}
	return err
}

// measureLoads times cold starts, warm throughput and stage 04's connections per
// second, in alternating rounds: each round measures every row of its table once.
// A new measurement is one more alternate(...) here, on a table of its own.
func measureLoads() {
	alternate("cold starts", starts, "cold", func(t *target) *sample { return &t.cold },
		func(t *target) sample {
			// Always-on Flask's time runs from `systemctl start` (t.start) to its response.
			if err := t.stop(); err != nil {
				return result(err)
			}
			start := time.Now()
			err := t.start()
			if err == nil {
				err = roll(t.client(0), t)
			}
			if d := time.Since(start); err == nil {
				return sample{ok: 1, elapsed: d, times: []time.Duration{d}}
			}
			return result(err)
		})
	alternate("warm throughput", rounds, "warm", func(t *target) *sample { return &t.warm },
		func(t *target) sample {
			c := t.client(clients)
			if err := t.start(); err != nil {
				return result(err)
			}
			hammer(c, t, 300*time.Millisecond) // warm-up
			s := hammer(c, t, warmDur)
			c.CloseIdleConnections()
			if err := t.stop(); err != nil {
				s.add(result(err))
			}
			return s
		})
	alternate("stage 04 connections/s", max(2, rounds), "conn",
		func(t *target) *sample { return &t.conn }, func(t *target) sample {
			if err := waitFor(30*time.Second, t.label+" to be idle", t.quiet); err != nil {
				return result(err)
			}
			s := hammer(t.peers(), t, connDur/time.Duration(max(2, rounds)))
			if !t.listening() {
				s.add(result(fmt.Errorf("dice.socket no longer listens after the load")))
			}
			return s
		})
}

// measureRestarts runs 16 clients on kept-alive connections, which never retry, through
// 6 restarts of dice.service, then through an upgrade: a new binary, then a restart.
func measureRestarts() {
	for _, t := range rows("restart") {
		logf("restarts under load: %s", t.label)
		program := tmp + "/" + t.bin + "/" + t.programs()[0]
		t.restart = t.underLoad(6, func() error { return nil })
		t.upgrade = t.underLoad(1, func() error {
			data, err := os.ReadFile(program) // a new file renamed over the old one
			return errors.Join(err, os.WriteFile(program+".new", data, 0o755),
				os.Rename(program+".new", program))
		})
		logf("  restarts %+v, upgrade %+v", t.restart, t.upgrade)
	}
}

// underLoad restarts dice.service n times while dicetest.KeptAlive's 16 clients call
// t, each time after they had 100 more answers, and after before.
func (t *target) underLoad(n int, before func() error) dicetest.Kept {
	answered, stop := dicetest.KeptAlive("127.0.0.1:"+strconv.Itoa(t.port), 16)
	more := func() error {
		min := answered() + 100
		return waitFor(30*time.Second, t.label+" to answer", func() bool { return answered() >= min })
	}
	err := more()
	for range n {
		err = errors.Join(err, before(), t.systemctl("restart", "dice.service"), more())
	}
	kept := stop()
	if err != nil {
		kept.Errors = append(kept.Errors, err)
	}
	return kept
}

// alternate measures the rows of table in turn, rounds times, adding up each one's
// samples in which(t).
func alternate(what string, rounds int, table string, which func(*target) *sample,
	measure func(*target) sample) {
	logf("%s: %d rounds, alternating", what, rounds)
	ts := rows(table)
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

// client is a net/http client of t keeping up to n connections; with n = 0 it opens
// a new connection for every request (Connection: close). Its connections go to t's
// port, or to its unix socket if it has one.
func (t *target) client(n int) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n, DisableKeepAlives: n == 0}
	if t.unix != "" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", t.m.RuntimeDir()+"/"+t.unix)
		}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// peers is t.client(0) with its connections from 16 source addresses in turn, as from
// 16 peers: stage 04 bounds the connections it takes from one (MaxConnectionsPerSource=).
func (t *target) peers() *http.Client {
	c, n := t.client(0), atomic.Uint32{}
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network,
		addr string) (net.Conn, error) {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n.Add(1)%16))}
		return (&net.Dialer{LocalAddr: src}).DialContext(ctx, network, addr)
	}
	return c
}

// roll sends GET /roll (or t.path) to t and reads the response; anything but a 200 is an error.
func roll(c *http.Client, t *target) error {
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(t.port) + cmp.Or(t.path, "/roll"))
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

// hammer sends GET /roll to t with c from clients goroutines for d.
func hammer(c *http.Client, t *target, d time.Duration) (total sample) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				err := roll(c, t)
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

// rss is the memory of a target at one moment: its processes and their RSS in KiB, of
// it the binaries' pages (file) and the helper's (05's proxy, 08's conmon).
type rss struct{ procs, kib, file, helper int }

func (r rss) String() string {
	switch r.procs {
	case 0:
		return "no process, 0 KiB"
	case 1:
		return fmt.Sprintf("1 process, %d KiB", r.kib)
	}
	return fmt.Sprintf("%d processes, %d KiB", r.procs, r.kib)
}
