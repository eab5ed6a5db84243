"""A real TensorBoard server for tests: a subprocess on a free loopback port, queried through
the HTTP data API the dashboards use, always stopped by its owner."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 40.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_command():
    script = Path(sys.executable).parent / "tensorboard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tensorboard.main"]


class TensorBoardServer:
    def __init__(self, logdir: Path, log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        self.proc = subprocess.Popen(
            tensorboard_command() + ["--logdir", str(logdir), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--reload_interval", "1",
                                      "--load_fast", "false"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.log_path = log_path

    def get(self, route, body=None, timeout=5.0):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + route, data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_for(self, route, ready, body=None, deadline=None):
        """Polls `route` until `ready(answer)`; fails with the server log on timeout."""
        deadline = deadline or time.monotonic() + STARTUP_TIMEOUT
        answer = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"TensorBoard exited with {self.proc.returncode}:\n{self.output()}")
            try:
                answer = self.get(route, body)
                if ready(answer):
                    return answer
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.25)
        pytest.fail(f"{route} not ready after {STARTUP_TIMEOUT:.0f} s; last answer "
                    f"{answer!r}\nserver log:\n{self.output()}")

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
