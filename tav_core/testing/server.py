"""A real ComfyUI server in a subprocess, driven through its HTTP and websocket API.

Used by `make demo`, the level-3 server tests and the level-4 browser tests, so that all of them
install and exercise the pack exactly as a user's ComfyUI does.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..comfy_client import ComfyClient, PromptFailed, PromptRejected  # noqa: F401 (the tests' errors too)

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "ComfyUI-TuneAVideo"


def comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or PACK_ROOT / ".comfyui")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Start ComfyUI with `--base-directory base_dir` and the pack linked into its custom_nodes."""

    def __init__(self, base_dir: Path, port: int | None = None, log_path: Path | None = None,
                 extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None):
        self.base_dir = Path(base_dir)
        self.extra_args = tuple(extra_args)  # ComfyUI launch options, e.g. ("--bf16-unet",)
        self.extra_env = dict(extra_env or {})  # e.g. a PYTHONPATH with stand-in packages
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.base_dir / "server.log"
        self.client = ComfyClient(self.url)
        self.process: subprocess.Popen | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "ComfyServer":
        for sub in ("custom_nodes", "input", "output", "models/checkpoints", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
        env = dict(os.environ) | self.extra_env
        # Without it OpenMP threads spin against the server's own threads: 10x slower sampling.
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir), *self.extra_args]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=comfyui_dir(), env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up; see {self.log_path}:\n{self.log_tail()}")
            if self.client.alive():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- HTTP and prompts: ComfyClient's --------------------------------------------------------
    def get(self, path: str):
        return self.client.get(path)

    def post(self, path: str, payload: dict):
        return self.client.post(path, payload)

    def queue(self, prompt: dict) -> str:
        return self.client.queue(prompt)

    def interrupt(self) -> None:
        self.client.interrupt()

    def history(self, prompt_id: str) -> dict:
        return self.client.history(prompt_id)

    def run(self, prompt: dict, timeout: float = 600.0, on_message=None) -> dict:
        """Queue `prompt`, follow it to its end and return its /history entry (ComfyClient.run).

        `on_message(type, data)` sees every websocket message of this prompt (progress included).
        A failing node raises PromptFailed, an interrupt InterruptedError, a time-out TimeoutError.
        """
        return self.client.run(prompt, timeout=timeout, on_message=on_message)[0]

    def output_files(self, history: dict) -> list[Path]:
        """Every file that the prompt's output nodes wrote, as paths under the base directory."""
        files = []
        for node_output in history.get("outputs", {}).values():
            for items in node_output.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        folder = self.base_dir / item.get("type", "output")
                        files.append(folder / item.get("subfolder", "") / item["filename"])
        return files
