# candlewick — the commands the README gives.
#   make run PROMPT="..."   fetch SmolLM2 if missing and stream its answer
#   make test               every test (installs what it needs: the wasm target, the models,
#                           llama.cpp through node-llama-cpp, Python's jinja2)
#   make models             fetch the three real models into ~/.cache/candlewick/models
#   make bench              candlewick beside llama.cpp: speed and memory

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test models reference python-deps wasm-target wasm-tools pkg fuzz bench run

test: models reference python-deps wasm-target
	$(CARGO) test --release
	$(MAKE) wasm-check

models:
	scripts/fetch-models.sh

# llama.cpp, the reference implementation, prebuilt for this machine (node-llama-cpp 3.21.1).
reference:
	@if [ ! -d tests/reference/node_modules/node-llama-cpp ] || [ tests/reference/package-lock.json -nt tests/reference/node_modules/.package-lock.json ]; then \
		npm ci --prefix tests/reference --no-audit --no-fund; \
	fi

# Python's Jinja2, which the chat-template tests compare against.
python-deps:
	@python3 -c 'import jinja2' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check jinja2

wasm-target:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The npm package in pkg/: the library for wasm32 (+simd128) through wasm-pack, then the entry
# points from js/. Installs wasm-pack and the wasm-bindgen-cli matching the locked wasm-bindgen
# when missing (cargo install builds them from source, a few minutes once).
WASM_BINDGEN_VERSION = $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
pkg: wasm-target wasm-tools
	wasm-pack build --release --target web --out-dir pkg --out-name candlewick
	node js/finish-package.mjs

wasm-tools:
	@wasm-bindgen --version 2>/dev/null | grep -qx 'wasm-bindgen $(WASM_BINDGEN_VERSION)' || $(CARGO) install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)
	@command -v wasm-pack >/dev/null || $(CARGO) install wasm-pack

# Fuzz the GGUF reader and tokenizer builder (needs `cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 300
fuzz:
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run gguf_tokenizer -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -dict=gguf.dict

# candlewick beside llama.cpp: prefill/decode tok/s and peak memory, 1 and 2 threads.
bench: models reference
	$(CARGO) bench --bench compare

# Fetch SmolLM2 if missing and stream its answer to PROMPT.
PROMPT ?= What is a candle wick? Answer in two sentences.
MODEL ?= $(HOME)/.cache/candlewick/models/SmolLM2-135M-Instruct.Q4_1.gguf
run:
	@scripts/fetch-models.sh smollm2 >/dev/null
	@$(CARGO) run --quiet --release -- generate --model "$(MODEL)" --prompt "$(PROMPT)"
