"""What viewers of a live run cost it: the toy preset's ``generate --live`` (CPU) with no viewer, with readers
(each reading the video stream and the events), and with a viewer that never reads plus one that leaves midway.
Each setting runs ``--rounds`` times, interleaved (the machine's load drifts); the table gives the generation time
(``timings.generate_seconds`` of the sidecar) and checks that every run's video decodes to the same frames.

    python bench/live_viewers.py [--seconds 6] [--rounds 2] [--out bench/results/live_viewers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import imageio.v3 as iio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"no viewer": (0, False), "3 readers": (3, False), "1 reader, 1 stalled, 1 leaving": (1, True)}


def viewer(url: str, path: str, read: int | None, stop: threading.Event) -> None:
    """GET ``path``; read ``read`` bytes then leave, everything until the end (0), or nothing (None)."""
    parts = urlparse(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    if read is None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    got = 0
    while not stop.is_set() and read is not None:
        chunk = sock.recv(65536)
        got += len(chunk)
        if not chunk or (read and got >= read):
            break
    if read is None:  # holds the connection, reads nothing
        stop.wait()
    sock.close()


def run(setting: str, seconds: float, folder: Path) -> dict:
    readers, hostile = SETTINGS[setting]
    out = folder / f"{len(list(folder.iterdir()))}.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "tokentrim_cli", "generate", "--preset", "toy", "-p",
                             "a red circle bouncing on a dark blue background", "--seconds", str(seconds), "--seed",
                             "1", "-o", str(out), "--live"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = None
    for line in proc.stderr:
        if (m := re.search(r"http://\S+", line)) is not None:
            url = m.group(0)
            break
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
    stop = threading.Event()
    while not out.with_name(f"{out.stem}.partial.json").exists():  # the first block: the video stream is there
        time.sleep(0.05)
    time.sleep(1.0)
    views = [(p, 0) for _ in range(readers) for p in ("/api/video", "/api/events")]
    views += [("/api/video", None), ("/api/video", 3000), ("/api/events", 300)] if hostile else []
    for path, read in views:
        threading.Thread(target=viewer, args=(url, path, read, stop), daemon=True).start()
    code = proc.wait()
    stop.set()
    side = json.loads(out.with_suffix(".json").read_text())
    return {"setting": setting, "exit": code, "generate_seconds": side["timings"]["generate_seconds"],
            "video": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/live_viewers.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(s, args.seconds, Path(tmp)) for _ in range(args.rounds) for s in SETTINGS]
        first = iio.imread(runs[0]["video"])
        same = all(np.array_equal(first, iio.imread(r["video"])) for r in runs[1:])
    rows = []
    print(f"{'viewers':34s} {'generate s (each run)':28s} median")
    for s in SETTINGS:
        times = [r["generate_seconds"] for r in runs if r["setting"] == s]
        rows.append({"viewers": s, "generate_seconds": times, "median": statistics.median(times),
                     "exits": [r["exit"] for r in runs if r["setting"] == s]})
        print(f"{s:34s} {', '.join(f'{t:.2f}' for t in times):28s} {statistics.median(times):.2f}")
    print(f"every video decodes to the same frames: {same}")
    result = {"seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "rows": rows, "same_frames": same}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
