# candlewick — the commands the README gives.
#   make run PROMPT="..."   fetch SmolLM2 if missing and stream its answer
#   make test               every test (installs what it needs: the wasm target, wasm-pack and
#                           wasm-bindgen-cli, the models, llama.cpp through node-llama-cpp,
#                           Python's jinja2, Chromium and playwright-core)
#   make demo               build pkg/, fetch the models, serve the demo page on localhost:8000
#   make pkg                the npm package in pkg/
#   make models             fetch the three real models into ~/.cache/candlewick/models
#   make bench              candlewick beside llama.cpp natively: speed and memory
#   make bench-session      a session's new turn beside a cold start: time to first token
#   make soak               1,000 mixed generations natively and in Node.js, memory before and after
#   make bench-scale        the same on files of Qwen3-Coder-30B-A3B's and Kimi K2's real shapes (17 + 9 GB)
#   make bench-browser      candlewick beside wllama in Chromium
#   make test-gpu           the GPU backend against the CPU (part of `make test`): its operations
#                           and products natively on Vulkan (Mesa's lavapipe without a GPU, installed
#                           when missing) and in Chromium's WebGPU (SwiftShader), and there greedy
#                           continuations of SmolLM2 and Qwen2.5-Coder
#   make test-gpu-forward   greedy continuations of SmolLM2 and Qwen2.5-Coder, GPU against CPU, natively

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test test-gpu test-gpu-forward vulkan-driver pkg-webgpu models reference python-deps wasm-target rust-src wasm-tools wasm-test browser-deps pkg demo fuzz bench bench-session bench-scale bench-browser soak run

test: models reference python-deps pkg browser-deps
	$(CARGO) test --release
	$(MAKE) wasm-test
	node --test tests/node/
	tests/browser/node_modules/.bin/tsc -p tests/types
	node tests/browser/demo.mjs
	node tests/browser/device.mjs
	node tests/browser/threads.mjs
	$(MAKE) test-gpu

models:
	scripts/fetch-models.sh

# llama.cpp, the reference implementation, prebuilt for this machine (node-llama-cpp 3.21.1).
reference:
	@if [ ! -d tests/reference/node_modules/node-llama-cpp ] || [ tests/reference/package-lock.json -nt tests/reference/node_modules/.package-lock.json ]; then \
		npm ci --prefix tests/reference --no-audit --no-fund; \
	fi

# Python's Jinja2, which the chat-template tests compare against, and the gguf package, whose
# dequantizers the block formats' tests compare against (tests/formats.rs).
python-deps:
	@python3 -c 'import jinja2, gguf' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check jinja2 gguf

wasm-target:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The standard library's source, which the threaded build compiles.
rust-src:
	@rustup component list --installed | grep -qx rust-src || rustup component add rust-src

# The npm package in pkg/: the library for wasm32 (+simd128) through wasm-pack, then the entry
# points from js/. Installs wasm-pack and the wasm-bindgen-cli matching the locked wasm-bindgen
# when missing (cargo install builds them from source, a few minutes once).
#
# Then the threaded build in pkg/threads/ (feature `threads`). Wasm threads need a standard
# library compiled with atomics, so it is built again (-Z build-std from rust-src; stable rustc
# allows -Z through RUSTC_BOOTSTRAP). +atomics no longer makes the memory shared (rust-lang/rust
# #147225; without them the build succeeds, with a memory no other thread can share):
# the link arguments ask for a shared, imported memory, of up to 4 GiB (the wasm32 limit), and
# export the thread-local storage symbols wasm-bindgen's thread support uses. RUSTFLAGS replace
# .cargo/config.toml's, so simd128 and getrandom's backend are repeated; its own target
# directory, so neither build's flags make the other rebuild everything.
WASM_BINDGEN_VERSION = $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
THREADS_RUSTFLAGS = -C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 --cfg getrandom_backend="wasm_js" \
	-C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
	-C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base
THREADS_TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)/wasm-threads
# The single-thread build has the `webgpu` feature (Model.load's `device` option: the GPU is
# chosen at run time, and a browser without WebGPU runs on the CPU); the threaded build is
# CPU-only (wgpu's browser types are not shareable between threads).
pkg: wasm-target rust-src wasm-tools
	wasm-pack build --release --target web --out-dir pkg --out-name candlewick -- --features webgpu
	RUSTC_BOOTSTRAP=1 RUSTFLAGS='$(THREADS_RUSTFLAGS)' CARGO_TARGET_DIR='$(THREADS_TARGET_DIR)' \
		wasm-pack build --release --target web --out-dir pkg/threads --out-name candlewick --no-pack -- --features threads -Z build-std=panic_abort,std
	node js/finish-package.mjs

# The `webgpu` build, for tests/browser/gpu.mjs (not part of the npm package).
WEBGPU_PKG = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/pkg-webgpu
pkg-webgpu: wasm-target wasm-tools
	wasm-pack build --release --target web --out-dir '$(WEBGPU_PKG)' --out-name candlewick --no-pack -- --features webgpu

# A Vulkan driver for the native GPU tests: any the loader finds, else Mesa's lavapipe (a
# software Vulkan) from Debian's mesa-vulkan-drivers.
vulkan-driver:
	@ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 || { \
		[ "$$(id -u)" = 0 ] || { echo "no Vulkan driver: run 'apt-get install mesa-vulkan-drivers' as root" >&2; exit 1; }; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q mesa-vulkan-drivers >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mesa-vulkan-drivers >/dev/null; }; }

# The GPU backend against the CPU's: each operation and product natively (seconds) and in
# headless Chromium on WebGPU (20-75 s on SwiftShader), then there the whole forward pass:
# greedy continuations of both models against the CPU (issue 12's acceptance, see the README
# for its minutes).
test-gpu: vulkan-driver pkg-webgpu browser-deps models
	$(CARGO) test --release --features webgpu --lib gpu::
	node tests/browser/gpu.mjs '$(WEBGPU_PKG)'
	node tests/browser/gpu-forward.mjs '$(WEBGPU_PKG)'

# The whole forward pass natively, greedy continuations of both models against the CPU
# (tests/gpu.rs, on lavapipe; see the README for its minutes). Not in `make test`: the browser's
# run of the same check (in `make test-gpu`) is the one the acceptance asks for.
test-gpu-forward: vulkan-driver models
	$(CARGO) test --release --features webgpu --test gpu

# In Node.js through wasm-bindgen-test: the simd128 kernels against the scalar code, and the
# JavaScript API on a real model (tests/web.rs).
WASM_TEST = CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner $(CARGO) test --release --target wasm32-unknown-unknown
wasm-test: wasm-target wasm-tools
	$(WASM_TEST) --lib kernels
	$(WASM_TEST) --test web

# Debian's Chromium and npm playwright-core (which never downloads a browser of its own).
browser-deps:
	@command -v chromium >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "Chromium is missing: run 'apt-get install chromium' as root" >&2; exit 1; }; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }
	@if [ ! -d tests/browser/node_modules/playwright-core ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then \
		npm ci --prefix tests/browser --no-audit --no-fund; \
	fi

# The demo page (www/) with the npm package, SmolLM2 first, on http://127.0.0.1:8000/.
demo: pkg models
	node www/serve.mjs --port 8000

wasm-tools:
	@wasm-bindgen --version 2>/dev/null | grep -qx 'wasm-bindgen $(WASM_BINDGEN_VERSION)' || $(CARGO) install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)
	@command -v wasm-pack >/dev/null || $(CARGO) install wasm-pack

# Every fuzz target for FUZZ_SECONDS each (needs `cargo install cargo-fuzz`): the GGUF reader and
# tokenizer builder (seeded with the real models' headers, vocabularies cut short, by
# fuzz/seeds.py), encode/decode round trips and chat-template rendering with the real models,
# tool definitions, the tool-call parser, the GBNF parser and matcher, the JSON Schema converter.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS = gguf_tokenizer tokenizer_roundtrip chat_template tool_definitions tool_call_parser grammar json_schema
FUZZ_ARGS_gguf_tokenizer = -max_len=65536 -dict=gguf.dict
FUZZ_ARGS_tokenizer_roundtrip = -max_len=4096
FUZZ_ARGS_chat_template = -max_len=8192
FUZZ_ARGS_tool_definitions = -max_len=4096
FUZZ_ARGS_tool_call_parser = -max_len=4096 -dict=tools.dict
FUZZ_ARGS_grammar = -max_len=4096 -dict=grammar.dict
FUZZ_ARGS_json_schema = -max_len=4096 -dict=json_schema.dict
MODELS_DIR = $(or $(CANDLEWICK_MODELS),$(or $(CANDLEWICK_CACHE),$(HOME)/.cache/candlewick)/models)
fuzz: models python-deps
	python3 fuzz/seeds.py $(MODELS_DIR) fuzz/corpus/gguf_tokenizer
	cd fuzz && $(foreach target,$(FUZZ_TARGETS),mkdir -p corpus/$(target) && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $(target) corpus/$(target) -- -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS_$(target)) &&) true

# candlewick beside llama.cpp: prefill/decode tok/s and peak memory, 1 and 2 threads.
bench: models reference
	$(CARGO) bench --bench compare

bench-session: models
	$(CARGO) bench --bench session

# 1,000 mixed generations on one model, natively then in Node.js: memory at the start, after
# 20 generations and at the end (not a timed test).
soak: models pkg
	$(CARGO) bench --bench soak
	node benches/soak.mjs

bench-scale: models reference
	$(CARGO) build --release
	$(CARGO) bench --bench scale

bench-browser: models pkg browser-deps
	$(CARGO) build --release
	node benches/browser/bench.mjs

# Fetch SmolLM2 if missing and stream its answer to PROMPT.
PROMPT ?= What is a candle wick? Answer in two sentences.
MODEL ?= $(HOME)/.cache/candlewick/models/SmolLM2-135M-Instruct.Q4_1.gguf
run:
	@scripts/fetch-models.sh smollm2 >/dev/null
	@$(CARGO) run --quiet --release -- generate --model "$(MODEL)" --prompt "$(PROMPT)"
