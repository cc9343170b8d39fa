# cantainer — everyday targets. `sudo make demo` and `sudo make test` work on a fresh Debian/Ubuntu box.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
# What the lab and the tests need from the OS: sshd for lab hosts, busybox for the offline rootfs,
# iproute2/ping/iperf3 for checks and benchmarks, util-linux for unshare/nsenter; umoci/skopeo build
# and push test images, apache2-utils' htpasswd protects a test registry; libnftables1 for the agent's
# nftables table (lab hosts share the machine's /usr; real hosts need it too); debootstrap and
# systemd-container (systemd-nspawn, with systemd's systemd-analyze) make full-OS lab hosts (`python -m lab up
# --os debian`); linux-libc-dev and cpp let the seccomp tests check the syscall tables against the kernel's headers;
# zsh (and tmux) to test `cantainer completion` in the shells it is for.
APT_PACKAGES := openssh-server openssh-client busybox-static iproute2 iputils-ping iperf3 python3-venv util-linux procps tmux \
                skopeo umoci apache2-utils libnftables1 debootstrap systemd-container linux-libc-dev cpp zsh
# The test registry: Debian's docker-registry, unpacked into the venv rather than installed, because
# installing it starts (and enables at boot) a registry listening on every address.
REGISTRY := $(VENV)/tools/usr/bin/docker-registry
NEEDS_ROOT = @if [ "$$(id -u)" != 0 ]; then echo "make $@ needs root (it installs packages and creates namespaces) — run: sudo make $@" >&2; exit 1; fi

.PHONY: setup demo test test-unit lint clean-labs bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(NEEDS_ROOT)
	@missing=""; for pkg in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@[ -x $(REGISTRY) ] || (tmp=$$(mktemp -d) && cd $$tmp && \
	    (apt-get download -qq docker-registry 2>/dev/null || (apt-get update -qq && apt-get download -qq docker-registry)) && \
	    dpkg-deb -x docker-registry_*.deb $(CURDIR)/$(VENV)/tools; status=$$?; rm -rf $$tmp; exit $$status)
	@touch $@

demo: setup
	$(NEEDS_ROOT)
	$(VENV)/bin/python -m lab.demo

test: setup
	$(NEEDS_ROOT)
	$(VENV)/bin/python -m pytest -q tests

# Pure logic only: no root, no lab (markers in pyproject.toml).
test-unit: setup
	$(VENV)/bin/python -m pytest -q -m "not root and not lab" tests

lint: setup
	$(VENV)/bin/ruff check .

# Benchmarks beside their anchors (runc/crun are apt-installed by the bench, Ansible into its own venv);
# table on stdout, rows in bench/results.json, plot in bench/up_vs_hosts.png. Quick: python -m bench --quick
bench: setup
	$(NEEDS_ROOT)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[bench]'
	$(VENV)/bin/python -m bench

clean-labs:
	$(NEEDS_ROOT)
	@for lab in $$(ls /var/lib/cantainer-lab 2>/dev/null); do [ -f /var/lib/cantainer-lab/$$lab/state.json ] && $(VENV)/bin/python -m lab down --name $$lab; done; true
