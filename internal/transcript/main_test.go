package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		want, got string
		ok        bool
		at        int
	}{
		{"same", "a\nb", "a\nb", true, 2},
		{"pids, dates and durations", "Dice-Pid: 4614\nDate: Mon, 30 Nov 2026 17:09:44 GMT\n" +
			"Active: active (running) since Mon 2026-11-30 17:09:37 UTC; 73ms ago",
			"Dice-Pid: 123\nDate: Fri, 4 Dec 2026 10:13:37 GMT\n" +
				"Active: active (running) since Fri 2026-12-04 10:13:37 UTC; 1min 3s ago", true, 3},
		{"RFC 3339 times", "time=2026-12-04T11:52:50.452Z level=INFO",
			"time=2026-12-04T12:08:47.216Z level=INFO", true, 1},
		{"columns", "    PID   RSS CMD\n  23879  5644 /bin/x", "  PID   RSS CMD\n  123 31608 /bin/x", true, 2},
		{"long numbers, any length", "keepalive sock 0:9   9343655 -      socket:[9343655] rw",
			"keepalive sock 0:9   10477841 -      socket:[10477841] rw", true, 1},
		{"a word differs", "Dice-Pid: 4614", "Dice-PID: 4614", false, 0},
		{"a line too many", "a", "a\nb", false, 1},
		{"... stands for none", "a\n...\nb", "a\nb", true, 3},
		{"... stands for several", "a\n...\nb\n...", "a\nx\ny\nb\nz", true, 4},
		{"... then a missing line", "a\n...\nc", "a\nb", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at, ok := match(strings.Split(tc.want, "\n"), strings.Split(tc.got, "\n"))
			assert.Equal(t, tc.ok, ok)
			if !ok {
				assert.Equal(t, tc.at, at, "the first line of want no match reached")
			}
		})
	}
}

func TestKeepElisions(t *testing.T) {
	t.Parallel()
	got := strings.Split("build\nbuild\nstarted 7\nrunning\nhint\nhint", "\n")
	assert.Equal(t, []string{"build", "...", "started 7", "running", "...", "hint"},
		keepElisions(strings.Split("build\n...\nstarted 3\nrunning\n...\nhint", "\n"), got))
	assert.Equal(t, got, keepElisions([]string{"x"}, got), "no ... : got as it is")
}

// TestRunAndRewrite runs a file's blocks in one bash (a cd carries over), compares
// output as a terminal shows it (no colour escapes), and rewrites only the command
// whose output differs.
func TestRunAndRewrite(t *testing.T) {
	t.Parallel()
	md := "# t\n```console\n$ cd /\n$ pwd\n/\n$ printf '\\e[31mpid\\e[0m %s\\r\\n' $$\npid 1\n" +
		"$ echo a\n> echo b\nb\n```\n"
	lines := strings.Split(strings.TrimSuffix(md, "\n"), "\n")
	cmds, blocks, notRun, err := parse("t.md", lines)
	require.NoError(t, err)
	assert.Equal(t, 1, blocks)
	assert.Empty(t, notRun)
	require.Len(t, cmds, 4)
	n, err := run(cmds, time.Minute)
	require.NoError(t, err)
	assert.Equal(t, 4, n)
	for i, c := range cmds[:3] {
		_, ok := match(c.want, c.got)
		assert.True(t, ok, "command %d: %q", i, c.got)
	}
	_, ok := match(cmds[3].want, cmds[3].got)
	require.False(t, ok)
	cmds[3].hasChanged = true
	assert.Equal(t, strings.Replace(md, "> echo b\nb\n", "> echo b\na\nb\n", 1), rewrite(lines, cmds))
}

// TestUpdateRefreshesNumbers: a number that masking hides (a stale MaxConnections=32
// as much as a pid) fails no check, and -update still rewrites it.
func TestUpdateRefreshesNumbers(t *testing.T) {
	t.Parallel()
	md := "```console\n$ echo MaxConnections=48; echo b\nMaxConnections=32\n...\n```\n"
	lines := strings.Split(strings.TrimSuffix(md, "\n"), "\n")
	cmds, _, _, err := parse("t.md", lines)
	require.NoError(t, err)
	_, err = run(cmds, time.Minute)
	require.NoError(t, err)
	_, ok := check(cmds[0], false)
	assert.True(t, ok)
	assert.False(t, cmds[0].hasChanged, "without -update nothing is rewritten")
	_, ok = check(cmds[0], true)
	assert.True(t, ok)
	assert.Equal(t, strings.Replace(md, "=32", "=48", 1), rewrite(lines, cmds))
}

func TestNotRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "t.md")
	require.NoError(t, os.WriteFile(file, []byte("<!-- not run: needs a second machine -->\n\n"+
		"```console\n$ ssh b\n```\n"), 0o600))
	text, err := os.ReadFile(file)
	require.NoError(t, err)
	cmds, blocks, notRun, err := parse(file, strings.Split(string(text), "\n"))
	require.NoError(t, err)
	assert.Empty(t, cmds)
	assert.Equal(t, 0, blocks)
	assert.Equal(t, []string{file + ":3:needs a second machine"}, notRun)
}

// TestDoesNotFinish: a command that outlives the timeout is named, and those before it
// are compared.
func TestDoesNotFinish(t *testing.T) {
	t.Parallel()
	// The sleep is bash itself (exec), so that the timeout's kill leaves no process
	// behind; its output goes elsewhere, as a process left holding the output would keep
	// run waiting a second more (WaitDelay).
	lines := strings.Split("```console\n$ echo a\na\n$ exec sleep 5 >/dev/null 2>&1\n"+
		"$ echo b\n```", "\n")
	cmds, _, _, err := parse("t.md", lines)
	require.NoError(t, err)
	n, err := run(cmds, 200*time.Millisecond)
	assert.ErrorContains(t, err, "4: `exec sleep 5 >/dev/null 2>&1` did not finish")
	require.Equal(t, 1, n)
	assert.Equal(t, []string{"a"}, cmds[0].got)
}

// TestIndented: a block in a list is read without its indent and written back with it.
func TestIndented(t *testing.T) {
	t.Parallel()
	md := "1. Run:\n   ```console\n   $ echo a\n   b\n   ```\n"
	lines := strings.Split(strings.TrimSuffix(md, "\n"), "\n")
	cmds, blocks, _, err := parse("t.md", lines)
	require.NoError(t, err)
	require.Equal(t, 1, blocks)
	require.Len(t, cmds, 1)
	assert.Equal(t, []string{"b"}, cmds[0].want)
	_, err = run(cmds, time.Minute)
	require.NoError(t, err)
	cmds[0].hasChanged = true
	assert.Equal(t, strings.Replace(md, "   b\n", "   a\n", 1), rewrite(lines, cmds))
}
