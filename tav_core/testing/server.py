"""A real ComfyUI server in a subprocess, driven through its HTTP and websocket API.

Used by `make demo`, the level-3 server tests and the level-4 browser tests, so that all of them
install and exercise the pack exactly as a user's ComfyUI does.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "ComfyUI-TuneAVideo"


def comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or PACK_ROOT / ".comfyui")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExecutionError(RuntimeError):
    """The server reported `execution_error` for a queued prompt."""

    def __init__(self, message: dict):
        self.details = message
        super().__init__(f"{message.get('node_type')} failed: {message.get('exception_message', '').strip()}")


class PromptRejected(RuntimeError):
    """`POST /prompt` refused the prompt (validation); `body` is ComfyUI's JSON answer."""

    def __init__(self, status: int, text: str):
        self.status = status
        try:
            self.body = json.loads(text)
        except ValueError:
            self.body = {}
        super().__init__(f"POST /prompt -> {status}: {text}")

    def input_errors(self, node_id: str) -> dict:
        """{input name: the value it got} for each input that validation refused on node `node_id`."""
        errors = self.body.get("node_errors", {}).get(node_id, {}).get("errors", [])
        return {e["extra_info"]["input_name"]: e["extra_info"].get("received_value")
                for e in errors if "input_name" in e.get("extra_info", {})}


class ComfyServer:
    """Start ComfyUI with `--base-directory base_dir` and the pack linked into its custom_nodes."""

    def __init__(self, base_dir: Path, port: int | None = None, log_path: Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.base_dir = Path(base_dir)
        self.extra_args = tuple(extra_args)  # ComfyUI launch options, e.g. ("--bf16-unet",)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.base_dir / "server.log"
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "ComfyServer":
        for sub in ("custom_nodes", "input", "output", "models/checkpoints", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
        env = dict(os.environ)
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
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
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

    # -- HTTP ---------------------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from e
        return json.loads(body) if body else None

    def queue(self, prompt: dict) -> str:
        """Queue an API-format workflow; returns its prompt id (validation errors raise PromptRejected)."""
        req = urllib.request.Request(self.url + "/prompt", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": prompt, "client_id": self.client_id}).encode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise PromptRejected(e.code, e.read().decode(errors="replace")) from e

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}").get(prompt_id, {})

    # -- running a prompt ---------------------------------------------------------------------
    def run(self, prompt: dict, timeout: float = 600.0, on_message=None) -> dict:
        """Queue `prompt`, follow it over /ws until it ends, and return its /history entry.

        `on_message(type, data)` sees every websocket message of this prompt (progress included).
        """
        import websocket  # websocket-client; imported here so importing this module stays light

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                         timeout=timeout)
        try:
            prompt_id = self.queue(prompt)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                raw = ws.recv()
                if not isinstance(raw, str):
                    continue  # binary frames are latent previews
                message = json.loads(raw)
                kind, data = message.get("type"), message.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if on_message:
                    on_message(kind, data)
                if kind == "execution_error":
                    raise ExecutionError(data)
                if kind == "execution_interrupted":
                    raise InterruptedError(f"prompt {prompt_id} was interrupted")
                if kind == "execution_success":
                    return self._wait_for_history(prompt_id, deadline)
            raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
        finally:
            ws.close()

    def _wait_for_history(self, prompt_id: str, deadline: float) -> dict:
        # The server announces success a moment before it files the prompt's history.
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry.get("outputs") is not None:
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} succeeded but its history never appeared")

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
