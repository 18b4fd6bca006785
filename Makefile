# Socket-activated dice: build, test and run the stages.
# `make` alone lists the targets.

STAGES := $(sort $(patsubst %/,%,$(wildcard 0[1-9]-*/)))
# The stages with a program of their own; 05 runs 01's program behind a proxy, 08 runs
# 03's in a container.
PROGRAMS := $(sort $(patsubst %/main.go,%,$(wildcard 0[1-9]-*/main.go)))
GO     ?= go
# Static, without symbol tables: 1.8 MB less RSS per process than a cgo build, and less
# work per exec, which stage 04 pays on every connection.
GOBUILD = CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w'
# make install-system: the binary goes to $(DESTDIR)$(PREFIX)/bin, the units to
# $(DESTDIR)/etc/systemd/system.
PREFIX ?= /usr/local

# "make run-stage 2" (as the README types it) and "make run-stage N=2" both work;
# so do "make diff 3" and "make diff N=3".
ifneq ($(filter $(firstword $(MAKECMDGOALS)),run-stage diff),)
  ifneq ($(word 2,$(MAKECMDGOALS)),)
    N := $(word 2,$(MAKECMDGOALS))
    $(eval $(N):;@:)
  endif
endif
# `make run-stage post-socket-activated`: the post's own units, units/post-*/.
STAGE = $(strip $(patsubst %/,%,$(wildcard 0$(N)-*/) $(patsubst units/%,%,$(if $(filter post-%,$(N)),$(wildcard units/$(N)/)))))
# Each stage builds on the one before it, except 04: one process per connection has
# nothing to gain from an idle exit, so it builds on 02, as 03 does. And 05: the same
# socket as 02, but in front of a proxy and an app that cannot take it (01's program).
# 06, 07 and 08 each add one idea to 03's idle exit.
BASE  = $(or $(if $(filter 4 5,$(N)),2),$(if $(filter 6 7 8,$(N)),3),$(shell expr 0$(N) - 1))
PREV  = $(patsubst %/,%,$(wildcard 0$(BASE)-*/))

.PHONY: help build test diff clean run-stage stop-stage status
.PHONY: install-system uninstall-system test-system test-distros transcripts figures measure bench image

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  make %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# The one build recipe: the tests, the bench and make install-system call it, e.g.
# `make build BIN=/tmp/x PROGRAMS=02-socket-activated`; PKG=./internal/bench/floor builds
# that package under the programs' names (the bench's floor).
BIN ?= bin
build: ## build each stage's program into bin/<stage>
	@mkdir -p $(BIN)
	@for s in $(PROGRAMS); do echo "$(GOBUILD) -o $(BIN)/$$s ./$(or $(PKG),$$s)"; \
		$(GOBUILD) -o $(BIN)/$$s ./$(or $(PKG),$$s) || exit 1; done

# go test -race needs cgo, and so a C compiler; without one the tests run without it.
# -parallel 6: the e2e tests mostly wait for systemd, each with a manager of its own; with
# go test's 2 packages at a time on 2 CPUs, at most 12 managers at once (each takes 3 of
# the 128 inotify instances a user may have).
RACE := $(if $(shell command -v gcc || command -v cc),-race)

# The e2e tests (build tag e2e: `go test ./...` alone leaves them out) run the programs
# built here once (DICE_TEST_BIN), not one build each.
test: ## gofmt, go vet and every test (the e2e ones under a real systemd)
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet -tags e2e ./...
	$(if $(RACE),,@echo "no C compiler: the tests run without -race (apt-get install gcc)")
	@bin=$$(mktemp -d) && trap 'rm -rf "$$bin"' EXIT && $(MAKE) -s build BIN="$$bin" >/dev/null && \
		echo "DICE_TEST_BIN=$$bin $(GO) test $(RACE) -tags e2e -count=1 -parallel 6 ./..." && \
		DICE_TEST_BIN="$$bin" $(GO) test $(RACE) -tags e2e -count=1 -parallel 6 ./...

diff: ## diff N=3: what stage N adds to the one it builds on (04, 05: 02; 06-08: 03)
	@test -n "$(STAGE)" && test -n "$(PREV)" || \
		{ echo "usage: make diff 3   (compares stage 2 and 3; stages: $(STAGES))"; exit 2; }
	@diff -ru --unidirectional-new-file --exclude=README.md --exclude='*_test.go' $(PREV) $(STAGE); test $$? -le 1
	@diff -ruN units/$(PREV) units/$(STAGE); test $$? -le 1

# Stage 08's image: $(BIN)/03-idle-exit FROM scratch (the tests: BIN=their build).
# Built at every run-stage: podman's layer cache makes that instant while the binary is
# the same, and a new one is never left out. Root's images are not a user's:
# install-system builds it too.
image: ## the container image of stage 08, localhost/dice (podman build, from bin/)
	@command -v podman >/dev/null || { echo "stage 08 needs podman: apt-get install" \
		"podman crun uidmap dbus-user-session (dnf install podman)" >&2; exit 1; }
	podman build --quiet -f 08-container/Containerfile -t localhost/dice $(BIN)

# BACKEND=flask: stage 05 with the blog post's Flask app behind the proxy. The post's
# own steps need Flask too.
run-stage: build $(if $(wildcard $(STAGE)/Containerfile),image) ## run-stage 2: install stage 2's units as user units and start them
	@test -n "$(STAGE)" || { echo "usage: make run-stage 2   (stages: $(STAGES))"; exit 2; }
	@if [ "$(BACKEND)" = flask ] || [ -n "$(filter post-%,$(STAGE))" ]; then \
		/usr/bin/python3 -c 'import flask' 2>/dev/null || { echo "this needs Flask:" \
		"apt-get install python3-flask (zypper install python3-Flask)"; exit 1; }; fi
	@DICE_BACKEND="$(BACKEND)" scripts/run-stage $(STAGE)

stop-stage: ## stop the running stage, remove its units (and a private manager)
	@scripts/run-stage --stop

status: ## systemctl status of the dice units, and their processes
	@scripts/run-stage --status

# STAGE=2 on the command line overrides STAGE above; the script takes 2, 02 or the name.
install-system: $(if $(filter 8 08 08-container,$(STAGE)),image) ## install-system STAGE=2: hardened system units (DESTDIR, PREFIX)
	@test -n "$(STAGE)" || { echo "usage: sudo make install-system STAGE=2   (stages: $(STAGES))"; exit 2; }
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" GO="$(GO)" scripts/run-stage --system "$(STAGE)"

uninstall-system: ## stop, disable and remove the system units and binary
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" scripts/run-stage --uninstall-system

test-system: ## stages 1-7 as system units (install-system), in Debian 12 under nspawn
	@DICE_STEPS='system-*' scripts/test-distros bookworm

# DISTROS=trixie: only that release (bookworm, trixie, forky).
test-distros: ## the README as a user in a login session, on Debian 12, 13 and testing
	@scripts/test-distros $(DISTROS)

# DICE_STEPS=transcripts scripts/test-distros trixie: the same, only checking them.
transcripts: ## run the docs' console blocks in Debian 13 and write what they print back
	@DICE_TRANSCRIPTS=update DICE_STEPS=transcripts scripts/test-distros trixie

figures: ## make bench in Debian 13 (as root, for stage 08), its figures written back to the docs
	@DICE_STEPS=bench scripts/test-distros trixie

# Both build the stages with `make build` and run each one, and the blog's Flask app
# (Debian's python3-flask, not a venv's; without it, its rows are skipped), under a
# private systemd of its own; bench runs the floors too. make measure prints a heading
# and the table on stdout (and, without Flask, the line that says so); its progress
# goes to stderr.
measure: ## RSS of stages 01-05 and 08 and of the blog's Flask app, as a Markdown table
	@CGO_ENABLED=0 $(GO) run ./internal/bench -measure

# BENCH_QUICK=1: a smoke run (< 1 min) whose output goes to a temporary directory.
BENCH_FLAGS ?= $(if $(BENCH_QUICK),-quick)
bench: ## cold start, throughput, RSS side by side: docs/bench.md, the figures in the docs
	CGO_ENABLED=0 $(GO) run ./internal/bench $(BENCH_FLAGS)

clean: ## remove bin/
	rm -rf bin
