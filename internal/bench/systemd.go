package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// manager is the private systemd user manager of scripts/user-manager, in a state
// directory of the benchmark's own.
type manager struct {
	top, state string
}

// up starts the manager and points systemctl at it (XDG_RUNTIME_DIR).
func (m *manager) up() error {
	cmd := exec.Command(filepath.Join(m.top, "scripts", "user-manager"), "up")
	cmd.Env = append(os.Environ(), "DICE_PRIVATE_SYSTEMD=1", "DICE_STATE_DIR="+m.state)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("scripts/user-manager up: %w", err)
	}
	dir, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "export XDG_RUNTIME_DIR=")
	if !ok {
		return fmt.Errorf("scripts/user-manager up printed %q, want an export line", out)
	}
	os.Setenv("XDG_RUNTIME_DIR", strings.Trim(dir, `'"`))
	os.Unsetenv("DBUS_SESSION_BUS_ADDRESS")
	return os.MkdirAll(m.unitDir(), 0o755)
}

// down stops the manager and every unit the benchmark started in it.
func (m *manager) down() {
	cmd := exec.Command(filepath.Join(m.top, "scripts", "user-manager"), "down")
	cmd.Env = append(os.Environ(), "DICE_PRIVATE_SYSTEMD=1", "DICE_STATE_DIR="+m.state)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	_ = cmd.Run()
}

func (m *manager) unitDir() string {
	return filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "systemd", "user")
}

// systemctl runs `systemctl --user args...` and returns its trimmed output.
func systemctl(args ...string) (string, error) {
	out, err := exec.Command("systemctl", append([]string{"--user"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("systemctl --user %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// show is one property of a unit.
func show(unit, prop string) string {
	out, _ := systemctl("show", "-p", prop, "--value", unit)
	return out
}

var unitName = regexp.MustCompile(`dice(@?)\.(socket|service)`)

// install copies the unit files of dir into the manager as name.socket, name.service
// or name@.service: ExecStart= runs binary with args appended, and what listened on
// 127.0.0.1:8080 listens on port.
func (m *manager) install(dir, name, binary string, args []string, port int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		var lines []string
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "ExecStart="); ok && binary != "" {
				_, params, _ := strings.Cut(rest, " ")
				line = strings.TrimSpace("ExecStart=" + binary + " " + params + " " +
					strings.Join(args, " "))
			}
			lines = append(lines, line)
		}
		content := strings.Join(lines, "\n")
		content = strings.ReplaceAll(content, "127.0.0.1:8080", "127.0.0.1:"+strconv.Itoa(port))
		content = unitName.ReplaceAllString(content, name+"$1.$2")
		file := unitName.ReplaceAllString(e.Name(), name+"$1.$2")
		if err := os.WriteFile(filepath.Join(m.unitDir(), file), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// dropIn adds a drop-in file to unit.
func (m *manager) dropIn(unit, content string) error {
	dir := filepath.Join(m.unitDir(), unit+".d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "bench.conf"), []byte(content), 0o644)
}

// installFlask installs the Flask app's unit as name.service on port.
func (m *manager) installFlask(dir, name string, port int) error {
	data, err := os.ReadFile(filepath.Join(dir, "dice-flask.service"))
	if err != nil {
		return err
	}
	content := strings.NewReplacer(
		"/usr/local/share/socket-dice/dice.py", filepath.Join(dir, "dice.py"),
		"--port 8080", "--port "+strconv.Itoa(port)).Replace(string(data))
	return os.WriteFile(filepath.Join(m.unitDir(), name+".service"), []byte(content), 0o644)
}

// waitFor polls cond every 5 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// pids are the main processes of the target's service, or of all its instances.
func (t *target) pids() []int {
	units := []string{t.service}
	if strings.HasSuffix(t.service, "@.service") {
		out, _ := systemctl("list-units", "--plain", "--no-legend", "--state=active",
			strings.TrimSuffix(t.service, ".service")+"*.service")
		units = nil
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				units = append(units, f[0])
			}
		}
	}
	var pids []int
	for _, u := range units {
		if pid, _ := strconv.Atoi(show(u, "MainPID")); pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// rssKiB is what `ps -o rss=` shows for pid: VmRSS of /proc/<pid>/status, in KiB.
func rssKiB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kib, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kib
		}
	}
	return 0
}

// noProcess tells whether the target runs no process at all now.
func (t *target) noProcess() bool {
	if t.socket != "" && t.template() {
		return show(t.socket, "NConnections") == "0"
	}
	state := show(t.service, "ActiveState")
	return state == "inactive" || state == "failed"
}

func (t *target) template() bool { return strings.HasSuffix(t.service, "@.service") }

// listening tells whether the target's socket still listens.
func (t *target) listening() bool {
	return show(t.socket, "ActiveState") == "active" && show(t.socket, "SubState") == "listening"
}
