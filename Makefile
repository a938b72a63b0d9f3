# kvp11 — convenience targets around CMake. Build directory: build/.
#
#   make demo     install missing Debian packages, build, run the S/MIME demo
#   make check    install missing Debian packages, build, run every test
#   make build    configure and build (incremental)
#   make sanitize build with ASan+UBSan in build-asan/ and run the tests there
#   make check-sanitize  ASan+UBSan build in build-asan/: unit, conformance,
#                 client and fuzz-replay tests (valgrind runs in `make check`)
#   make fuzz     libFuzzer build (clang-14) in build-fuzz/: each fuzzer runs
#                 FUZZ_SECONDS (30); not part of `make check`
#   make install  install what was built (cmake --install build); as root it
#                 also creates the group kvp11, the user kvp11, kvp11-clients
#   make uninstall remove what make install placed (never an edited
#                 configuration, the registry, secrets or logs; lists them)
#   make deb      the Debian package in build/ (CPack); docs/deployment.md
#   make clean    remove the build directories
#
# Variables: BUILD_DIR (build), JOBS (2), BUILD_TYPE (RelWithDebInfo),
# CMAKE_ARGS (extra configure arguments), SKIP_DEPS=1 (do not run install-deps),
# FUZZ_SECONDS (30), FUZZ_CC (clang-14).

BUILD_DIR  ?= build
JOBS       ?= 2
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
CMAKE      ?= cmake
CTEST      ?= ctest
FUZZ_SECONDS ?= 30
FUZZ_CC    ?= clang-14
# Tests of `make check-sanitize` (ctest -R / -E). Left out: valgrind (does not
# mix with ASan); clients whose third-party code cannot run with the ASan
# runtime preloaded: pkcs11-provider dlopens with RTLD_DEEPBIND, and GnuTLS
# p11tool / p11-kit hang at exit in p11-kit's destructor (freelocale), with
# SoftHSM2 alone too.
SANITIZE_TESTS   ?= ^(unit/|conformance/|clients_|kv/parse$$|fuzz-seeds/|fuzz-replay/|sync/)
SANITIZE_EXCLUDE ?= valgrind|openssl_proxy_provider|gnutls_certtool|p11kit_install

.PHONY: all deps configure build check test demo sanitize check-sanitize fuzz install uninstall deb clean help

all: build

help:
	@sed -n '2,21p' Makefile | sed 's/^# \{0,1\}//'

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

check-sanitize: deps
	$(CMAKE) -S . -B $(BUILD_DIR)-asan -DKVP11_WERROR=ON -DKVP11_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_ARGS)
	$(CMAKE) --build $(BUILD_DIR)-asan -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(CTEST) --test-dir $(BUILD_DIR)-asan --output-on-failure -j$(JOBS) \
	  -R '$(SANITIZE_TESTS)' -E '$(SANITIZE_EXCLUDE)'

# libFuzzer targets (tests/fuzz/) with ASan+UBSan in build-fuzz/; only the
# fuzzers are built there. Findings: build-fuzz/tests/fuzz/<name>/artifacts/.
fuzz: deps
	$(CMAKE) -S . -B $(BUILD_DIR)-fuzz -DCMAKE_C_COMPILER=$(FUZZ_CC) -DKVP11_FUZZ=ON -DKVP11_SANITIZE=ON \
	  -DKVP11_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVP11_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CMAKE_ARGS)
	$(CMAKE) --build $(BUILD_DIR)-fuzz -j$(JOBS) --target kvp11-fuzzers
	$(CTEST) --test-dir $(BUILD_DIR)-fuzz --output-on-failure -j$(JOBS) -L '^fuzz$$'

install: build
	KVP11_CREATE_ACCOUNTS=1 $(CMAKE) --install $(BUILD_DIR)

uninstall:
	$(CMAKE) --build $(BUILD_DIR) --target uninstall

# The package installs under /usr with the module in p11-kit's directory.
deb: build
	cd $(BUILD_DIR) && cpack -G DEB

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-asan $(BUILD_DIR)-fuzz
