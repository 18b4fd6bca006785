// Command transcript runs the ```console blocks of the repository's Markdown and
// compares what they show with what the commands print now.
//
//	go run ./internal/transcript [-update] [-root] [file.md ...]
//
// Without files it reads README.md, 0*/README.md, post/README.md and docs/*.md. A
// block's `$ ` lines run in order, and `> ` lines continue the command above (as bash's
// prompts show them); everything else is the output expected, stdout and stderr
// together. All the blocks of a file run in one bash started in the current
// directory, so a `cd` or an `eval "$(scripts/user-manager env)"` carries from block
// to block as in a reader's shell. Before comparing, numbers (pids, ports, sizes,
// durations, dates), day and month names and long hex strings are masked, and runs of
// blanks count as one; a line `...` stands for any lines, none included.
//
// A block that cannot run carries its reason on the line before it:
// <!-- not run: needs a second machine -->. A file whose blocks run as root outside a
// login session (a private manager's) says so on a line of its own:
// <!-- transcripts: as root, outside a login session -->; those files run only with
// -root, the others only without it.
//
// -update rewrites each command's output that differs from a fresh run, even if only
// in masked numbers, keeping its `...` lines where they stand. Without it a difference
// is a diff naming the file and line, and the exit status is 1. `make test-distros`
// runs it on Debian trixie as the README's reader; `make transcripts` runs it there
// with -update.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

const (
	rootMark   = "<!-- transcripts: as root, outside a login session -->"
	notRunMark = "<!-- not run:"
)

// A command is one `$ ` line (and its `> ` lines) and the output the block shows.
type command struct {
	line       int      // the index of its `$ ` line in the file
	indent     string   // the block's indent
	code       []string // the command, without the prompts
	want       []string // the output shown
	wantAt     int      // the index of the first output line
	got        []string // the output of this run
	hasChanged bool
}

func main() {
	update := flag.Bool("update", false, "rewrite the blocks whose output differs")
	root := flag.Bool("root", false, "check the files marked as run as root")
	timeout := flag.Duration("timeout", 10*time.Minute, "the longest one file may run")
	flag.Parse()
	files := flag.Args()
	if len(files) == 0 {
		for _, glob := range []string{"README.md", "0*/README.md", "post/README.md", "docs/*.md"} {
			m, _ := filepath.Glob(glob)
			files = append(files, m...)
		}
	}
	failed, rewritten, broken, blocks, commands := 0, 0, 0, 0, 0
	var notRun []string
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(text), "\n"), "\n")
		if strings.Contains(string(text), "\n"+rootMark+"\n") != *root {
			continue
		}
		cmds, nb, skipped, err := parse(file, lines)
		if err != nil {
			fatal(err)
		}
		blocks, commands, notRun = blocks+nb, commands+len(cmds), append(notRun, skipped...)
		if len(cmds) == 0 {
			continue
		}
		if n, err := run(cmds, *timeout); err != nil {
			fmt.Printf("%s:%v\n", file, err)
			broken++
			cmds = cmds[:n] // compare those that finished
		}
		changed := false
		for _, c := range cmds {
			if at, ok := check(c, *update); !ok {
				failed++
				if !*update {
					report(file, c, at)
				}
			}
			if c.hasChanged {
				changed, rewritten = true, rewritten+1
			}
		}
		if *update && changed {
			if err := os.WriteFile(file, []byte(rewrite(lines, cmds)), 0o644); err != nil {
				fatal(err)
			}
		}
	}
	fmt.Printf("transcripts: %d blocks run (%d commands), %d not run\n", blocks, commands, len(notRun))
	for _, s := range notRun {
		fmt.Println("  not run:", s)
	}
	if *update {
		fmt.Printf("transcripts: %d commands' output rewritten, %d of them beyond numbers\n",
			rewritten, failed)
	} else if failed > 0 {
		fmt.Printf("transcripts: FAIL: %d commands' output differs (-update rewrites it)\n", failed)
	}
	if broken > 0 || failed > 0 && !*update {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "transcript:", err)
	os.Exit(2)
}

// parse returns the commands of a file's console blocks that run, the number of
// those blocks, and the blocks that do not run with their reasons.
func parse(file string, lines []string) (cmds []*command, blocks int, notRun []string, err error) {
	for i := 0; i < len(lines); i++ {
		// A block may be indented, in a list: its lines are read without the indent.
		indent, _, _ := strings.Cut(lines[i], "```console")
		if strings.TrimSpace(lines[i]) != "```console" || strings.TrimSpace(indent) != "" {
			continue
		}
		end := i + 1
		for end < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[end]), "```") {
			end++
		}
		prev := i - 1
		for prev >= 0 && strings.TrimSpace(lines[prev]) == "" {
			prev--
		}
		if prev >= 0 && strings.HasPrefix(strings.TrimSpace(lines[prev]), notRunMark) {
			reason := strings.TrimPrefix(strings.TrimSpace(lines[prev]), notRunMark)
			reason = strings.TrimSuffix(reason, "-->")
			notRun = append(notRun, fmt.Sprintf("%s:%d:%s", file, i+1, strings.TrimSpace(reason)))
			i = end
			continue
		}
		blocks++
		var c *command
		for j := i + 1; j < end; j++ {
			switch l := strings.TrimPrefix(lines[j], indent); {
			case strings.HasPrefix(l, "$ "):
				c = &command{line: j, code: []string{l[2:]}, wantAt: j + 1, indent: indent}
				cmds = append(cmds, c)
			case c != nil && len(c.want) == 0 && strings.HasPrefix(l, "> "):
				c.code, c.wantAt = append(c.code, l[2:]), j+1
			case c == nil:
				return nil, 0, nil, fmt.Errorf("%s:%d: a console block starts with `$ `", file, j+1)
			default:
				c.want = append(c.want, l)
			}
		}
		i = end
	}
	return cmds, blocks, notRun, nil
}

// run runs the commands in one bash, each with stdin from /dev/null and stderr on
// stdout, and splits the output after each one at a mark of its own. It returns how
// many finished.
func run(cmds []*command, timeout time.Duration) (int, error) {
	nonce := make([]byte, 8)
	rand.Read(nonce)
	mark := "@@transcript-" + hex.EncodeToString(nonce) + "@@"
	var script strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&script, "{\n%s\n} </dev/null 2>&1\nprintf '\\n%s\\n'\n", strings.Join(c.code, "\n"), mark)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.WaitDelay = time.Second // a background job left running keeps stdout open
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	parts := strings.Split(out.String(), "\n"+mark+"\n")
	for i, c := range cmds {
		if i == len(parts)-1 { // no mark after it
			return i, fmt.Errorf("%d: `%s` did not finish (%v)", c.line+1, c.code[0], err)
		}
		if s := strings.TrimSuffix(parts[i], "\n"); s != "" {
			c.got = strings.Split(terminal.ReplaceAllString(s, ""), "\n")
		}
	}
	return len(cmds), nil
}

// terminal matches what a terminal does not print: carriage returns, and the colour
// escapes of a program that colours even a file (werkzeug).
var terminal = regexp.MustCompile("\r|\x1b\\[[0-9;]*m")

var masks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun)\b`), "Day"},
	{regexp.MustCompile(`\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b`), "Month"},
	// Long hex strings (invocation IDs) are numbers too: a long run of decimal digits
	// (an inode) is one, whatever its length.
	{regexp.MustCompile(`\b(0x)?[0-9a-f]{8,}\b`), "0"},
	// A number with its unit (1.5s, 73ms, 30.0µs, 6.1M, 2min), runs of them ("1min 3s"),
	// and every other run of digits, in a word too (the 11 and 452 of 2026-12-04T11:52:50.452Z).
	{regexp.MustCompile(`\d+(\.\d+)?(ns|us|µs|ms|s|min|h|d|[KMGT]i?B?|B)?`), "0"},
	{regexp.MustCompile(`\s+`), " "},
	{regexp.MustCompile(`0( 0)+\b`), "0"},
}

func mask(line string) string {
	for _, m := range masks {
		line = m.re.ReplaceAllString(line, m.with)
	}
	return strings.TrimSpace(line)
}

// match tells whether got is what want shows; if not, the index of the first line of
// want that no match reached.
func match(want, got []string) (int, bool) {
	far := 0
	var try func(w, g int) bool
	try = func(w, g int) bool {
		far = max(far, w)
		switch {
		case w == len(want):
			return g == len(got)
		case want[w] == "...":
			for k := g; k <= len(got); k++ {
				if try(w+1, k) {
					return true
				}
			}
			return false
		default:
			return g < len(got) && mask(want[w]) == mask(got[g]) && try(w+1, g+1)
		}
	}
	ok := try(0, 0)
	return far, ok
}

// check compares c's output with what its block shows, and tells where they differ
// after masking. With update, an output that differs only in what the masks hide is
// rewritten too: a number of a unit the block shows (MaxConnections=48) is masked
// like a pid, and would otherwise stay as first captured.
func check(c *command, update bool) (at int, ok bool) {
	at, ok = match(c.want, c.got)
	c.hasChanged = !ok || update && !slices.Equal(keepElisions(c.want, c.got), c.want)
	return at, ok
}

// report prints a command whose output differs: where, then a diff of the output.
func report(file string, c *command, at int) {
	line := c.wantAt + at
	fmt.Printf("%s:%d: the output of `%s` differs\n", file, line+1, c.code[0])
	dir, err := os.MkdirTemp("", "transcript")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(dir)
	want, got := filepath.Join(dir, "want"), filepath.Join(dir, "got")
	os.WriteFile(want, []byte(strings.Join(c.want, "\n")+"\n"), 0o600)
	os.WriteFile(got, []byte(strings.Join(c.got, "\n")+"\n"), 0o600)
	diff := exec.Command("diff", "-u", "--label", fmt.Sprintf("%s:%d", file, c.wantAt+1),
		"--label", "this run", want, got)
	diff.Stdout = os.Stdout
	diff.Run()
}

// rewrite returns the file with the changed commands' output taken from this run.
func rewrite(lines []string, cmds []*command) string {
	var out []string
	next := 0
	for _, c := range cmds {
		if !c.hasChanged {
			continue
		}
		out = append(out, lines[next:c.wantAt]...)
		for _, l := range keepElisions(c.want, c.got) {
			out = append(out, c.indent+l)
		}
		next = c.wantAt + len(c.want)
	}
	return strings.Join(append(out, lines[next:]...), "\n") + "\n"
}

// keepElisions returns got with the `...` lines of want kept where they stand: the
// lines before the first `...` and after the last are taken from the start and the
// end of got, a part between two `...` from where it appears in got.
func keepElisions(want, got []string) []string {
	var parts [][]string
	part := []string{}
	for _, l := range want {
		if l == "..." {
			parts, part = append(parts, part), []string{}
		} else {
			part = append(part, l)
		}
	}
	parts = append(parts, part)
	head, tail := len(parts[0]), len(parts[len(parts)-1])
	if len(parts) == 1 || head+tail > len(got) {
		return got
	}
	out := append([]string{}, got[:head]...)
	rest := got[head : len(got)-tail]
	for _, p := range parts[1 : len(parts)-1] {
		for k := 0; len(p) > 0 && k+len(p) <= len(rest); k++ {
			if _, ok := match(p, rest[k:k+len(p)]); ok {
				out, rest = append(append(out, "..."), rest[k:k+len(p)]...), rest[k+len(p):]
				break
			}
		}
	}
	return append(append(out, "..."), got[len(got)-tail:]...)
}
