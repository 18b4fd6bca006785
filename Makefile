# Socket-activated dice: build, test and run the four stages.
# `make` alone lists the targets.

STAGES := $(sort $(patsubst %/,%,$(wildcard 0[1-9]-*/)))
GO     ?= go

# "make run-stage 2" (as the README types it) and "make run-stage N=2" both work;
# so do "make diff 3" and "make diff N=3".
ifneq ($(filter $(firstword $(MAKECMDGOALS)),run-stage diff),)
  ifneq ($(word 2,$(MAKECMDGOALS)),)
    N := $(word 2,$(MAKECMDGOALS))
    $(eval $(N):;@:)
  endif
endif
STAGE = $(patsubst %/,%,$(wildcard 0$(N)-*/))
# Each stage builds on the one before it, except 04: one process per connection has
# nothing to gain from an idle exit, so it builds on 02, as 03 does.
PREV  = $(patsubst %/,%,$(wildcard 0$(if $(filter 4,$(N)),2,$(shell expr 0$(N) - 1))-*/))

.PHONY: help build test diff clean run-stage stop-stage status

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  make %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## build every stage into bin/<stage>
	@mkdir -p bin
	@for s in $(STAGES); do echo "go build -o bin/$$s ./$$s"; \
		$(GO) build -o bin/$$s ./$$s || exit 1; done

test: ## gofmt, go vet and every test (the e2e ones under a real systemd)
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

diff: ## diff N=3: what stage N adds to stage N-1
	@test -n "$(STAGE)" && test -n "$(PREV)" || \
		{ echo "usage: make diff 3   (compares stage 2 and 3; stages: $(STAGES))"; exit 2; }
	@diff -ru --exclude=README.md $(PREV) $(STAGE); test $$? -le 1

run-stage: build ## run-stage 2: install stage 2's units as user units and start them
	@test -n "$(STAGE)" || { echo "usage: make run-stage 2   (stages: $(STAGES))"; exit 2; }
	@scripts/run-stage $(STAGE)

stop-stage: ## stop the running stage, remove its units (and a private manager)
	@scripts/run-stage --stop

status: ## systemctl status of the dice units, and their processes
	@scripts/run-stage --status

clean: ## remove bin/
	rm -rf bin
