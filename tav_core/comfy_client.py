"""A client of one ComfyUI server given by URL: queue a prompt and follow it over /ws, /upload, /view.

The batch runner drives each of its servers through one of these, and the tests' ComfyServer is built
on it. Failures of the server itself
(refused or dropped connections, 5xx answers, time-outs) raise ServerGone, so that the caller can move
the work elsewhere; a prompt the server rejects or fails to run raises PromptRejected or PromptFailed.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


class ServerGone(ConnectionError):
    """The server did not answer, dropped the connection, or answered with a server error."""


class PromptRejected(RuntimeError):
    """The server refused the prompt as invalid (HTTP 400 from /prompt); `body` is its JSON answer."""

    def __init__(self, url: str, status: int, text: str):
        self.status = status
        try:
            self.body = json.loads(text)
        except ValueError:
            self.body = {}
        super().__init__(f"{url} refused the prompt ({status}): {text}")

    def input_errors(self, node_id: str) -> dict:
        """{input name: the value it got} for each input that validation refused on node `node_id`."""
        errors = self.body.get("node_errors", {}).get(node_id, {}).get("errors", [])
        return {e["extra_info"]["input_name"]: e["extra_info"].get("received_value")
                for e in errors if "input_name" in e.get("extra_info", {})}


class PromptFailed(RuntimeError):
    """The prompt ran and a node failed (`execution_error`)."""

    def __init__(self, data: dict):
        self.details = data
        super().__init__(f"{data.get('node_type')} failed: {str(data.get('exception_message', '')).strip()}")


class PromptInterrupted(ServerGone, InterruptedError):
    """Someone interrupted the prompt on the server (/interrupt): to a batch, the server is lost for it."""


class PromptTimedOut(ServerGone, TimeoutError):
    """The prompt did not finish in the time given."""


class ComfyClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            self.url = "http://" + self.url
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            if e.code == 400 and path == "/prompt":
                raise PromptRejected(self.url, e.code, body) from e
            if e.code >= 500:
                raise ServerGone(f"{self.url}{path} answered {e.code}: {body[:300]}") from e
            raise RuntimeError(f"{self.url}{path} answered {e.code}: {body[:300]}") from e
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            raise ServerGone(f"{self.url} is unreachable ({path}): {e}") from e

    def get(self, path: str):
        return json.loads(self._request(path))

    def post(self, path: str, payload: dict):
        body = self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(body) if body else None

    def alive(self) -> bool:
        try:
            self.get("/system_stats")
            return True
        except ServerGone:
            return False

    # -- files ---------------------------------------------------------------------------------
    def upload(self, path: Path, name: str, subfolder: str = "", kind: str = "input") -> dict:
        """ComfyUI's own /upload/image (any file type), overwriting a file of the same name."""
        boundary = uuid.uuid4().hex
        fields = {"type": kind, "subfolder": subfolder, "overwrite": "true"}
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + Path(path).read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        body = self._request("/upload/image", b"".join(parts),
                             {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(body)

    def view(self, filename: str, subfolder: str = "", kind: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        return self._request(f"/view?{query}")

    # -- prompts -------------------------------------------------------------------------------
    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its id (validation errors raise PromptRejected)."""
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}").get(prompt_id, {})

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def run(self, prompt: dict, timeout: float = 3600.0, on_message=None) -> tuple[dict, set[str]]:
        """Queue `prompt`, follow it to its end; returns its /history entry and the ids of the nodes
        that the server took from its cache instead of running them."""
        import websocket  # websocket-client, only needed here

        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=timeout)
        except (OSError, websocket.WebSocketException) as e:
            raise ServerGone(f"{self.url} refused the websocket: {e}") from e
        cached: set[str] = set()
        try:
            prompt_id = self.queue(prompt)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    raw = ws.recv()
                except (OSError, websocket.WebSocketException) as e:
                    raise ServerGone(f"{self.url} dropped the connection while running a prompt: {e}") from e
                if not isinstance(raw, str):
                    continue  # binary frames are previews
                message = json.loads(raw)
                kind, data = message.get("type"), message.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if on_message:
                    on_message(kind, data)
                if kind == "execution_cached":
                    cached.update(str(n) for n in data.get("nodes", []))
                elif kind == "execution_error":
                    raise PromptFailed(data)
                elif kind == "execution_interrupted":
                    raise PromptInterrupted(f"{self.url} interrupted prompt {prompt_id}")
                elif kind == "execution_success":
                    while time.monotonic() < deadline:  # history is filed a moment after success
                        entry = self.history(prompt_id)
                        if entry.get("outputs") is not None:
                            return entry, cached
                        time.sleep(0.1)
            raise PromptTimedOut(f"{self.url}: prompt {prompt_id} did not finish within {timeout:.0f} s")
        finally:
            ws.close()
