# imgw: a thin wrapper over meson/ninja. Every target installs what is
# missing first (deps/install.sh, Debian packages only).
#
#   make            build (release, -O2) into build/
#   make run        build and start one node on :8080 (memory store, no broker)
#   make test       unit + integration tests, then again under ASan/UBSan
#   make bench      build bench/imgw-bench
#   make clean      remove the build directories

BUILD     ?= build
SAN_BUILD ?= build-san
SANITIZE  ?= address,undefined
# make run's development secret; set your own in the environment. It is
# public (it is in this file), so it is only for a local dev node; it is 32+
# bytes because imgw refuses shorter secrets at start.
IMGW__AUTH__JWT_SECRET ?= imgw-dev-secret-for-make-run-only-0123456789
export IMGW__AUTH__JWT_SECRET

.PHONY: all deps build run test test-fast check-sanitize bench clean fuzz

all: build

deps:
	@bash deps/install.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD)

$(SAN_BUILD)/build.ninja:
	CC=clang meson setup $(SAN_BUILD) -Dsanitize=$(SANITIZE) -Dbench=false -Doptimization=1

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: build
	@echo "imgw: dev token for user u1: $$(./$(BUILD)/imgw-token u1)"
	@echo "imgw: browser demo at http://localhost:8080/ (dev tokens on)"
	IMGW__AUTH__DEV_TOKENS=true ./$(BUILD)/imgw -c conf/imgw.ini

TSAN_BUILD ?= build-tsan
TSAN_UNITS = test/test_mailbox test/test_usermap test/test_id test/test_store_memory

$(TSAN_BUILD)/build.ninja:
	CC=clang meson setup $(TSAN_BUILD) -Dsanitize=thread -Dbench=false -Dintegration=false -Doptimization=1

# The plain build's tests, the ASan/UBSan build's, the ThreadSanitizer unit
# tests of the shared structures, the bench smoke run and a few seconds of
# every fuzz target; one summary line at the end.
test: build $(SAN_BUILD)/build.ninja $(TSAN_BUILD)/build.ninja
	ninja -C $(SAN_BUILD)
	ninja -C $(TSAN_BUILD) $(TSAN_UNITS)
	/usr/bin/python3 test/run.py --build $(BUILD) --build $(SAN_BUILD) \
	    --tsan $(TSAN_BUILD) --smoke $(BUILD) --fuzz 5

test-fast: build
	/usr/bin/python3 test/run.py --build $(BUILD)

check-sanitize: deps $(SAN_BUILD)/build.ninja
	ninja -C $(SAN_BUILD)
	/usr/bin/python3 test/run.py --build $(SAN_BUILD)

bench: build
	ninja -C $(BUILD) bench/imgw-bench

fuzz: deps
	bash test/fuzz/run.sh 600

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(TSAN_BUILD) build-fuzz
