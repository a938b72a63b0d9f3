# kvp11 — convenience targets around CMake. Build directory: build/.
#
#   make demo     install missing Debian packages, build, run the S/MIME demo
#   make check    install missing Debian packages, build, run every test
#   make build    configure and build (incremental)
#   make sanitize build with ASan+UBSan in build-asan/ and run the tests there
#   make install  install what was built (cmake --install build)
#   make clean    remove the build directories
#
# Variables: BUILD_DIR (build), JOBS (2), BUILD_TYPE (RelWithDebInfo),
# CMAKE_ARGS (extra configure arguments), SKIP_DEPS=1 (do not run install-deps).

BUILD_DIR  ?= build
JOBS       ?= 2
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
CMAKE      ?= cmake
CTEST      ?= ctest

.PHONY: all deps configure build check test demo sanitize install clean help

all: build

help:
	@sed -n '2,12p' Makefile | sed 's/^# \{0,1\}//'

deps:
ifeq ($(SKIP_DEPS),1)
	@echo "deps: skipped (SKIP_DEPS=1)"
else
	@scripts/install-deps.sh
endif

# Configuring again is cheap and idempotent (nothing is rebuilt when nothing
# changed), and makes sure the CI options are in effect.
configure:
	$(CMAKE) -S . -B $(BUILD_DIR) -DKVP11_WERROR=ON -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

build: configure
	$(CMAKE) --build $(BUILD_DIR) -j$(JOBS)

test:
	$(CTEST) --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS)

check: deps
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory test

demo: deps
	$(MAKE) --no-print-directory build
	BUILD_DIR=$(BUILD_DIR) scripts/demo.sh

# ASan + UBSan build and test run in build-asan/ (not yet part of `make check`).
sanitize: deps
	$(CMAKE) -S . -B $(BUILD_DIR)-asan -DKVP11_WERROR=ON -DKVP11_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_ARGS)
	$(CMAKE) --build $(BUILD_DIR)-asan -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(CTEST) --test-dir $(BUILD_DIR)-asan --output-on-failure -j$(JOBS)

install: build
	$(CMAKE) --install $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-asan
