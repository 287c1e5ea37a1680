PY ?= python3

.PHONY: install test demo bench clean

install:            ## install tokentrim and its test dependencies (CPU torch on machines without CUDA)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'

test: install       ## run the offline CPU test suite
	$(PY) -m pytest

demo: install       ## generate a short clip with the embedded default preset
	tokentrim generate --prompt "a red circle bouncing on a dark blue background" --seconds 2 --output demo.mp4

bench:              ## CPU benchmarks (GPU ones run where a GPU is present)
	$(PY) bench/engine_speed.py

clean:
	rm -rf build dist *.egg-info .pytest_cache outputs demo.mp4 demo.json
