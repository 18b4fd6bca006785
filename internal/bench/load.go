package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// oneRequest opens a connection to port, sends GET /roll with Connection: close and
// reads the whole response. It returns the Dice-Pid header.
func oneRequest(port int) (pid string, err error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /roll HTTP/1.1\r\nHost: 127.0.0.1:" + strconv.Itoa(port) +
		"\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return resp.Header.Get("Dice-Pid"), nil
}

// timedRequest is oneRequest's duration: connect to the full response.
func timedRequest(port int) (time.Duration, error) {
	start := time.Now()
	_, err := oneRequest(port)
	return time.Since(start), err
}

// monotonic is CLOCK_MONOTONIC, the clock of systemd's *TimestampMonotonic properties.
func monotonic() time.Duration {
	var ts syscall.Timespec
	_, _, _ = syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}

// keepAliveClient is a net/http client that keeps up to n connections to one host.
func keepAliveClient(n int) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: n, MaxIdleConnsPerHost: n, MaxConnsPerHost: n,
		DisableCompression: true, IdleConnTimeout: 30 * time.Second,
	}}
}

// get sends GET /roll with client and reads the response; not a 200 is an error.
func get(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

// counts are what a load run did.
type counts struct {
	ok, failed int64
	elapsed    time.Duration
	firstErr   error
}

func (c counts) rate() float64 { return float64(c.ok) / c.elapsed.Seconds() }

// hammer runs do in workers goroutines for d (after warmup, not counted), at most max
// successful calls in all, and counts.
func hammer(workers int, warmup, d time.Duration, max int64, do func() error) counts {
	var ok, failed atomic.Int64
	var counting atomic.Bool
	var errOnce sync.Once
	var firstErr error
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := do()
				if !counting.Load() {
					continue
				}
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
				} else if ok.Add(1) >= max {
					cancel()
				}
			}
		}()
	}
	time.Sleep(warmup)
	counting.Store(true)
	start := time.Now()
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	cancel()
	elapsed := time.Since(start)
	wg.Wait()
	return counts{ok: ok.Load(), failed: failed.Load(), elapsed: elapsed, firstErr: firstErr}
}

// throughput is GET /roll with keep-alive from workers clients for d.
func throughput(port, workers int, warmup, d time.Duration) counts {
	client := keepAliveClient(workers)
	defer client.CloseIdleConnections()
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/roll"
	return hammer(workers, warmup, d, 10_000_000, func() error { return get(client, url) })
}

// connections is one new connection per request (Connection: close) from workers
// clients for d.
func connections(port, workers int, d time.Duration) counts {
	return hammer(workers, 0, d, 10_000_000, func() error {
		_, err := oneRequest(port)
		return err
	})
}

// reactivations sends one request at a time to port for d, each spaced gap after the
// previous response, and counts the distinct processes (Dice-Pid) that answered.
func reactivations(port int, gap, d time.Duration) (pids int, c counts) {
	seen := map[string]bool{}
	start := time.Now()
	for time.Since(start) < d {
		pid, err := oneRequest(port)
		if err != nil {
			c.failed++
			if c.firstErr == nil {
				c.firstErr = err
			}
		} else {
			c.ok++
			seen[pid] = true
		}
		time.Sleep(gap)
	}
	c.elapsed = time.Since(start)
	return len(seen), c
}

// isRefused tells a connection refused (nothing listens yet) from other errors.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
