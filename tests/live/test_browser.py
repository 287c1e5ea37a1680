"""``generate --live`` in a real browser: Debian's chromium (``.ci/run`` installs it), headless, driven by
playwright (pointed at that executable; playwright's own browsers are never downloaded).

The page of a toy-preset live run plays the video as it is made (the video element's time advances, close behind
the newest frame), shows the drift chart of the sidecar's records, and takes a prompt and a keep going; the run's
sidecar records the switch at the block the page was told; the replay from that sidecar decodes to the same
frames as the live video. Meanwhile one viewer never reads its video stream and two others leave midway: the run
neither waits for them nor changes (it finishes, and equals the replay)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from test_cli import run_main
from tokentrim_cli.output.video import read_video
import zygote

CHROMIUM = os.environ.get("TOKENTRIM_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red circle bouncing on a dark blue background"
SWITCH = "a green square sliding on a white background"
SHOT = os.environ.get("TOKENTRIM_LIVE_SCREENSHOT")  # a path: save the page there while the run goes (docs/live.png)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM} (.ci/run installs "
                                "Debian's: apt-get install -y chromium)")


def start_run(tmp_path: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """The live run as a user starts it, and the URL it printed (its stderr lines keep being collected)."""
    out = tmp_path / "live.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENTRIM_PRESET": "toy"}
    proc = zygote.popen([sys.executable, "-m", "tokentrim_cli", "generate", "-p", PROMPT, "--seconds", "3",
                         "--seed", "5", "-o", str(out), "--live"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                        text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    found = threading.Event()

    def collect():
        for line in proc.stderr:
            lines.append(line)
            if "http://" in line:
                found.set()

    threading.Thread(target=collect, daemon=True).start()
    assert found.wait(90), "".join(lines)
    url = re.search(r"http://\S+", "".join(lines)).group(0)
    return proc, url, lines


def raw_get(url: str, path: str, read: int | None) -> socket.socket:
    """A viewer by hand: GET ``path`` with the token; read ``read`` bytes then leave (None: never read)."""
    parts = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    if read is not None:
        got = b""
        while len(got) < read:
            got += sock.recv(4096)
        sock.close()
    return sock


def wait_until(page, expression: str, timeout: float = 30.0):
    """Poll ``expression`` in the page until it is truthy (playwright's wait_for_function evaluates strings with
    eval, which the page's Content-Security-Policy forbids, as it should)."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)
    return value


def test_the_page_plays_the_run_takes_a_prompt_and_the_replay_equals_the_live_video(tmp_path, capsys):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

    t0 = time.monotonic()
    proc = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # first: it takes seconds
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            proc, url, lines = start_run(tmp_path)
            page.goto(url)
            page.fill("#more", "1")
            page.click("#extend")
            wait_until(page, "document.getElementById('note').textContent.includes('now 4')")
            wait_until(page, f"window.tokentrimLive.chart.points.length >= {8 if SHOT else 2}", 60)
            stalled = raw_get(url, "/api/video", None)  # never reads
            raw_get(url, "/api/video", 2000)  # leaves midway
            raw_get(url, "/api/events", 200)
            page.fill("#prompt", SWITCH)
            page.select_option("#mode", "cut")
            page.click("#send")
            wait_until(page, "document.getElementById('note').textContent.startsWith('switch at block')")
            block = int(re.search(r"block (\d+)", page.inner_text("#note")).group(1))
            wait_until(page, "document.getElementById('video').currentTime > 0.5", 30)
            played = [page.evaluate("document.getElementById('video').currentTime")]
            lag = []
            for _ in range(6):
                time.sleep(0.25)
                played.append(page.evaluate("document.getElementById('video').currentTime"))
                lag.append(page.evaluate("""(() => { const v = document.getElementById('video'), b = window.tokentrimLive.blocks;
                    return b.length && v.buffered.length ? b[b.length - 1].frames_written / 16 - v.buffered.end(0) : null; })()"""))
            if SHOT:  # the picture in the README: most of the run drawn, the switch in the middle
                wait_until(page, "window.tokentrimLive.chart.points.length >= 20", 60)
                page.screenshot(path=SHOT, full_page=True)
            wait_until(page, "window.tokentrimLive.done !== undefined", 90)
            wait_until(page, "(v => v.buffered.length && v.buffered.end(0) > 3.99)(document.getElementById('video'))",
                       20)  # every frame reached the page: 64 at 16 fps
            chart = page.evaluate("window.tokentrimLive.chart")
            browser.close()
        assert proc.wait(60) == 0, "".join(lines)
        stalled.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
    browser_seconds = time.monotonic() - t0

    assert played[-1] > played[0] > 0.5, played  # the video element plays as the run goes
    lag = [x for x in lag if x is not None]  # seconds of video written but not yet in the page, as the run went
    assert lag and min(lag) <= 4 / 16, lag  # a block (3 frames) and the frame the encoder holds, on a busy machine
    side = json.loads((tmp_path / "live.json").read_text())
    assert side["status"] == "ok" and side["plan"]["seconds"] == 4.0 and side["frames"] == 64
    assert side["timeline"][1]["prompt"] == SWITCH and side["timeline"][1]["switch"] == "cut"
    assert side["switches"] == [{"entry": 1, "block": block, "requested": side["timeline"][1]["start"],
                                 "snapped": side["switches"][0]["snapped"], "mode": "cut"}]
    assert [b["prompt"] for b in side["blocks"]] == [0] * block + [1] * (len(side["blocks"]) - block)
    drawn = {p["block"]: p for p in chart["points"]}
    assert len(drawn) == len(side["blocks"]) and [s["block"] for s in chart["switches"]] == [block]
    for rec in side["blocks"]:  # the chart holds the sidecar's numbers
        p = drawn[rec["index"]]
        assert (p["severity"], p["threshold"], p["regenerations"], p["pruned"]) == \
               (rec["severity"], rec["threshold"], rec["regenerations"], rec["pruned_tokens"])

    replay = tmp_path / "replay.mp4"
    code, _, err = run_main(capsys, "generate", "--preset", "toy", "--timeline", str(tmp_path / "live.json"),
                            "--seconds", "4", "--seed", "5", "-q", "-o", str(replay))
    assert code == 0, err
    live, again = read_video(tmp_path / "live.mp4"), read_video(replay)
    assert live.shape == again.shape == (64, 64, 64, 3) and np.array_equal(live, again)
    print(f"browser test: {browser_seconds:.1f} s for the live run and the page; max lag {max(lag):.3f} s")
