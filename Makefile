PY ?= python3

.PHONY: install test demo bench gpu-check gpu-wheels toy-model drift clean

install:            ## install tokentrim and its test dependencies (CPU torch on machines without CUDA)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'

test: install       ## run the offline CPU test suite (two workers, -n 2 --dist worksteal)
	$(PY) -m pytest -n 2 --dist worksteal

demo: install       ## generate a short clip with the embedded default preset
	tokentrim generate --prompt "a red circle bouncing on a dark blue background" --seconds 8 --seed 1 --output demo.mp4 --overwrite

bench:              ## CPU benchmarks (GPU ones run where a GPU is present)
	$(PY) bench/engine_speed.py
	$(PY) bench/attention_overhead.py
	$(PY) bench/cache_memory.py
	$(PY) bench/pruning_cost.py
	$(PY) bench/world_render.py

# on a machine that lacks a package the check needs, the wheels of `make gpu-wheels` (carried in .whl/) are put
# in build/gpu-site first, offline, and put ahead on the path; ARGS go to the script (e.g. ARGS="--out $$OUT/g.json")
GPU_SITE = $(CURDIR)/build/gpu-site
gpu-check:          ## every real preset on one CUDA GPU, random weights of the real shapes (< 8 min, no download)
	@if [ -d .whl ] && ! $(PY) -c 'import diffusers, torchao, imageio_ffmpeg' 2>/dev/null; then \
		echo "installing .whl/ into $(GPU_SITE)"; \
		$(PY) -m pip install -q --no-index --no-deps --upgrade --target $(GPU_SITE) .whl/*.whl || exit 3; fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 $(PY) bench/gpu_check.py $(ARGS)

# what the lent GPU machine lacks (Python 3.12, no network; ../shared/docs/gpu.md), at pyproject.toml's pins;
# imageio-ffmpeg 0.6.0 because 0.8.1's wheel is over the 64 MiB a call may carry (38 MB in all)
DEVICE_WHEELS = diffusers==0.42.1 torchao==0.18.0 imageio-ffmpeg==0.6.0
gpu-wheels:         ## download those wheels into .whl/ (carried to the GPU machine: bench/gpu_check.py says how)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
		--platform any -d .whl $(DEVICE_WHEELS)

toy-model: install  ## retrain the shipped toy world model from scratch (seeded; four phases, 99 min on 2 CPU cores)
	$(PY) training/train_toy.py --out build/toy-phase1 --seed 0 --steps 4000 --lr 1e-3 --p-clean 0.35 --bf16
	$(PY) training/train_toy.py --init build/toy-phase1 --out build/toy-phase2 --seed 1 --steps 3200 \
		--stop-at 2221 --lr 5e-4 --p-clean 0.5 --bf16
	$(PY) training/train_toy.py --init build/toy-phase2 --out build/toy-phase3 --seed 2 --steps 3000 \
		--lr 2e-4 --p-clean 0.5 --object-weight 4 --caption-dropout 0.1 --ema 0.998 --bf16
	$(PY) training/train_toy.py --init build/toy-phase3 --out tokentrim_cli/toy/weights --seed 3 --steps 2000 \
		--lr 2e-4 --p-clean 0.5 --object-weight 4 --caption-dropout 0.1 --ema 0.998 --bf16 \
		--rollout 0.75 --rollout-steps 4
	for i in 1 2 3; do cp build/toy-phase$$i/training.json tokentrim_cli/toy/weights/training-phase$$i.json; done

drift: install      ## drift benchmark on the toy world (baseline / TokenTrim / three-partition / both)
	$(PY) bench/drift.py

clean:
	rm -rf build dist *.egg-info .pytest_cache outputs demo.mp4 demo.json demo.partial.mp4 demo.partial.json .demo.lock
