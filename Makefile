# imgw: a thin wrapper over meson/ninja. Every target installs what is
# missing first (deps/install.sh, Debian packages only): make and make run
# only what building and running need (deps/install.sh run), the test
# targets everything the tests use (Redis, RabbitMQ, Chromium, Node...).
#
#   make            build (release, -O2) into build/
#   make run        build imgw and imgw-token, start one node on 127.0.0.1:8080
#                   (durable file store in ./data, no broker, dev tokens on;
#                   STORE=memory for the in-memory store, RUN_BIND=0.0.0.0
#                   opens it, dev tokens included, to the network)
#   make lint       source rules: one allocator, floors, no "../" includes
#   make test       lint, unit + integration tests, then again under ASan/UBSan
#   make bench      build bench/imgw-bench
#   make clean      remove the build directories

BUILD     ?= build
SAN_BUILD ?= build-san
SANITIZE  ?= address,undefined
# make run's store: the durable file backend in ./data (gitignored).
STORE     ?= file
DATA      ?= data
# make run's development secret; set your own in the environment. It is
# public (it is in this file), so it is only for a local dev node; it is 32+
# bytes because imgw refuses shorter secrets at start.
IMGW__AUTH__JWT_SECRET ?= imgw-dev-secret-for-make-run-only-0123456789
export IMGW__AUTH__JWT_SECRET
# make run's listen address: loopback, because its /dev/token endpoint
# mints a token for any user.
RUN_BIND ?= 127.0.0.1

.PHONY: all deps deps-run build run lint test test-fast check-sanitize bench clean fuzz

all: build

deps:
	@bash deps/install.sh

deps-run:
	@bash deps/install.sh run

$(BUILD)/build.ninja:
	meson setup $(BUILD)

$(SAN_BUILD)/build.ninja:
	CC=clang meson setup $(SAN_BUILD) -Db_sanitize=$(SANITIZE) -Db_lundef=false -Dbench=false -Doptimization=1

build: deps-run $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: deps-run $(BUILD)/build.ninja
	ninja -C $(BUILD) imgw imgw-token
	@echo "imgw: dev token for user u1: $$(./$(BUILD)/imgw-token u1)"
	@echo "imgw: browser demo at http://localhost:8080/ (dev tokens on, listening on $(RUN_BIND), store $(STORE))"
	IMGW__AUTH__DEV_TOKENS=true IMGW__SERVER__BIND=$(RUN_BIND) IMGW__STORE__BACKEND=$(STORE) IMGW__STORE__PATH=$(DATA) ./$(BUILD)/imgw -c conf/imgw.ini

TSAN_BUILD ?= build-tsan
TSAN_UNITS = test/test_mailbox test/test_usermap test/test_id test/test_store_memory test/test_store_file

$(TSAN_BUILD)/build.ninja:
	CC=clang meson setup $(TSAN_BUILD) -Db_sanitize=thread -Db_lundef=false -Dbench=false -Dintegration=false -Doptimization=1

# Allocator policy and include floors (tools/lint.sh prints file:line).
lint:
	@sh tools/lint.sh

# The lint, the plain build's tests, the ASan/UBSan build's, the
# ThreadSanitizer unit tests of the shared structures and the
# ThreadSanitizer imgw scraped under cross-loop traffic
# (test_tsan_metrics.py), the bench smoke run and a few seconds of every
# fuzz target; one summary line at the end.
test: deps lint build $(SAN_BUILD)/build.ninja $(TSAN_BUILD)/build.ninja
	ninja -C $(SAN_BUILD)
	ninja -C $(TSAN_BUILD) imgw $(TSAN_UNITS)
	/usr/bin/python3 test/run.py --build $(BUILD) --build $(SAN_BUILD) \
	    --tsan $(TSAN_BUILD) --smoke $(BUILD) --fuzz 5

test-fast: deps build
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
