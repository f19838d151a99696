# sandboxd: `make run` installs everything and serves on 127.0.0.1:8080; `make test` runs
# the whole suite (unit, kernel integration, HTTP end-to-end, then the cgroup v2 VM lane).
# Needs root on Debian 12 (apt packages, namespaces, cgroups).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:8080
# The job journal of `make run`: in the checkout's git-ignored state/ (created if missing).
JOURNAL ?= state/sandboxd.db
# Build deps (libcap-dev for python-prctl), the seccomp runtime, what the cgroup v2
# VM lane boots with, and the headless browser of the web console's tests; then the toolchains, from the `packages` of languages.toml:
# every language by default, `make deps LANGUAGES="c cpp python3"` only those.
BASE_PACKAGES := libcap-dev libseccomp2 python3-venv python3-dev gcc g++ make curl \
	qemu-system-x86 busybox-static cpio kmod chromium chromium-driver redis-server
LANGUAGES ?=
LANGUAGE_PACKAGES := $(shell $(PYTHON) -c 'import sys, tomllib; d = tomllib.load(open("languages.toml", "rb")); want = sys.argv[1:] or list(d); bad = [w for w in want if w not in d]; bad and sys.exit("unknown language(s): " + " ".join(bad)); print(*sorted({p for w in want for p in d[w].get("packages", [])}))' $(LANGUAGES))
ifeq ($(LANGUAGE_PACKAGES),)
$(error cannot read the packages of languages.toml (LANGUAGES="$(LANGUAGES)"))
endif
APT_PACKAGES := $(BASE_PACKAGES) $(LANGUAGE_PACKAGES)

.PHONY: FORCE deps run install test test-unit test-host test-v2 test-v1-comount lint bench soak clean

deps: $(VENV)/.installed

# apt only when something is missing, so a second run is fast and offline (dpkg -s per
# package). .apt-stamp records the package set; it changes (and the venv is refreshed)
# only when the set does, e.g. a new language or another LANGUAGES.
.apt-stamp: FORCE
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $$missing; \
	fi
	@echo "$(APT_PACKAGES)" | cmp -s - $@ || echo "$(APT_PACKAGES)" > $@

FORCE:

$(VENV)/.installed: pyproject.toml .apt-stamp
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

run: deps
	@mkdir -p $(dir $(JOURNAL))
	$(VENV)/bin/sandboxd serve --listen $(LISTEN) --journal $(JOURNAL)

# `sandboxd` on PATH (a link to this checkout's virtualenv: the daemon runs as root from
# here), the systemd unit, and a commented default configuration, which an existing
# /etc/sandboxd/sandboxd.toml is never replaced by. DESTDIR stages it all elsewhere.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
DESTDIR ?=
CONFIG_FILE := $(DESTDIR)$(SYSCONFDIR)/sandboxd/sandboxd.toml

install: deps
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR)
	install -d -m 755 $(DESTDIR)$(SYSCONFDIR)/sandboxd
	ln -sfn $(CURDIR)/$(VENV)/bin/sandboxd $(DESTDIR)$(PREFIX)/bin/sandboxd
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@PROJECT_DIR@|$(CURDIR)|g' \
		systemd/sandboxd.service > $(DESTDIR)$(UNITDIR)/sandboxd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/sandboxd.service
	@# 0640: the file may hold API tokens.
	@if [ -e $(CONFIG_FILE) ]; then \
		echo "kept the existing $(CONFIG_FILE)"; \
	else \
		sed 's|@PROJECT_DIR@|$(CURDIR)|g' systemd/sandboxd.toml > $(CONFIG_FILE).new && \
		chmod 640 $(CONFIG_FILE).new && mv $(CONFIG_FILE).new $(CONFIG_FILE) && \
		echo "installed $(CONFIG_FILE)"; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "start it with: systemctl enable --now sandboxd"

test: deps
	$(PY) -m pytest tests -ra
	$(MAKE) test-v2
	$(MAKE) test-v1-comount

test-unit: deps
	$(PY) -m pytest tests/unit -q

test-host: deps
	$(PY) -m pytest tests -ra

# cgroup v2 proven on a real v2 kernel: Debian 12's kernel under qemu (tests/vm/README.md).
test-v2: deps
	$(PY) tests/vm/run_v2_lane.py

# cgroup v1 with cpu,cpuacct co-mounted (systemd's hybrid layout), in the same VM: a few
# real boxes (tests/vm/run_v1_lane.py): the layout most systemd hybrid hosts have.
test-v1-comount: deps
	$(PY) tests/vm/run_v1_lane.py

lint: deps
	$(VENV)/bin/ruff check sandboxd tests bench
	$(VENV)/bin/mypy sandboxd

# Measures, never asserts (BENCHMARKS.md). bubblewrap is the comparison, installed here
# only (not by `make deps`/`make run`). BENCH_N=20 BENCH_RUNS=200 shortens it.
bench: deps
	@command -v bwrap >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bubblewrap; }
	$(PY) bench/overhead.py

# 10 000 mixed runs (hello worlds, fork/memory bombs, output floods, timeouts) through a
# daemon, then checks nothing leaked (bench/soak.py). Not part of `make test`; SOAK_N=500
# shortens it.
soak: deps
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .apt-stamp .cache .pytest_cache
