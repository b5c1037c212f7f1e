"""Batch edits across ComfyUI servers: `python -m tav_core.batch jobs.yaml --server URL [--server URL ...]`.

Per clip, on one server at a time: tune once (One-Shot Tune + Save Tuned Weights; the tuned file is
kept in the results folder), then one prompt per edited prompt through Load Tuned Weights. The edits of
a clip run back to back on the same server, so ComfyUI's cache runs the clip's VAE encoding and DDIM
inversion once and reuses them for every further edit. Clips go to whichever server is free.

Everything lands in the results folder: `<job>/tuned-<key>.safetensors` (the key: what tuning depends on), `<job>/<edit>.mp4`, a thumbnail
strip and `<job>/<edit>.json` per edit (written last: an edit with its .json is done, and a re-run
skips it), and results.json/.csv, report.md and report.html. A server that dies mid-job is dropped and
its clip goes back to the queue, to continue on another server from what was saved; a clip that a
server refuses (or a node of it fails there) goes to the other servers, and is reported as failed once
every live server has refused it. When every server is gone the run stops with an error naming what
is left.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

from . import batch_report
from .batch_jobs import Job, JobsError, JobsFile, load_jobs
from .comfy_client import ComfyClient, PromptFailed, PromptRejected, ServerGone

REMOTE_DIR = "tav-batch"  # under the servers' input/ and output/tuneavideo/
INVERT_NODE = "invert"


class AllServersGone(RuntimeError):
    pass


# -- graphs ----------------------------------------------------------------------------------------
def _clip_nodes(checkpoint: str, clip_file: str, s: dict) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "video": {"class_type": "TAVLoadVideo", "inputs": {
            "video": clip_file, "frame_count": s["frame_count"], "start_frame": s["start_frame"],
            "frame_stride": s["frame_stride"], "width": s["width"], "height": s["height"],
            "resize_mode": "center crop"}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["video", 0], "vae": ["ckpt", 2]}},
    }


def tune_graph(job: Job, checkpoint: str, clip_file: str) -> dict:
    s = job.settings
    return {
        **_clip_nodes(checkpoint, clip_file, s),
        "inflate": {"class_type": "TAVInflateModel", "inputs": {"model": ["ckpt", 0], "seed": 0,
                                                                 "video_wide_groupnorm": True}},
        "source": {"class_type": "CLIPTextEncode", "inputs": {"text": job.source_prompt, "clip": ["ckpt", 1]}},
        "tune": {"class_type": "TAVOneShotTune", "inputs": {
            "model": ["inflate", 0], "positive": ["source", 0], "latent": ["encode", 0],
            "steps": s["tune_steps"], "learning_rate": s["learning_rate"], "seed": s["seed"],
            "trainable": "paper (attn1.to_q, attn2.to_q, attn_temp)", "gradient_checkpointing": True,
            "checkpoint_blocks": "all blocks", "precision": "auto", "optimizer": "AdamW", "cache": False}},
        "save": {"class_type": "TAVSaveTuned", "inputs": {
            "model": ["tune", 0], "filename_prefix": f"tuneavideo/{REMOTE_DIR}/{job.name}",
            "source_prompt": job.source_prompt}},
    }


def edit_graph(job: Job, edit: str, checkpoint: str, clip_file: str, tuned: str,
               clip_model: str | None) -> dict:
    s = job.settings
    graph = {
        **_clip_nodes(checkpoint, clip_file, s),
        "tuned": {"class_type": "TAVLoadTuned", "inputs": {"model": ["ckpt", 0], "weights": tuned}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        INVERT_NODE: {"class_type": "TAVDDIMInvert", "inputs": {
            "model": ["tuned", 0], "latent": ["encode", 0], "conditioning": ["empty", 0], "steps": s["steps"]}},
        "edited": {"class_type": "CLIPTextEncode", "inputs": {"text": job.edits[edit], "clip": ["ckpt", 1]}},
        "sample": {"class_type": "TAVVideoSample", "inputs": {
            "model": ["tuned", 0], "positive": ["edited", 0], "negative": ["empty", 0],
            "latent": [INVERT_NODE, 0], "steps": s["steps"], "cfg": s["cfg"], "seed": s["seed"], "eta": 0.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "create": {"class_type": "CreateVideo", "inputs": {"images": ["decode", 0], "fps": ["video", 2]}},
        "savevideo": {"class_type": "SaveVideo", "inputs": {
            "video": ["create", 0], "filename_prefix": f"{REMOTE_DIR}/{job.name}/{edit}", "format": "mp4",
            "codec": "h264"}},
    }
    if clip_model:
        graph["score"] = {"class_type": "TAVCLIPScore", "inputs": {
            "images": ["decode", 0], "prompt": job.edits[edit], "clip_model": clip_model,
            "pickscore_model": "none"}}
    return graph


# -- results folder ---------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


TUNING_SETTINGS = ("frame_count", "start_frame", "frame_stride", "width", "height", "tune_steps", "learning_rate",
                   "seed")


class Results:
    def __init__(self, folder: Path, checkpoint: str):
        self.folder, self.checkpoint = Path(folder), checkpoint
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def job_dir(self, job: Job) -> Path:
        path = self.folder / job.name
        path.mkdir(exist_ok=True)
        return path

    def record_path(self, job: Job, edit: str) -> Path:
        return self.job_dir(job) / f"{edit}.json"

    def done(self, job: Job, edit: str) -> bool:
        path = self.record_path(job, edit)
        if not path.exists():
            return False
        record = json.loads(path.read_text())
        return (record.get("edited_prompt") == job.edits[edit] and record.get("settings") == job.settings
                and record.get("checkpoint") == self.checkpoint)

    def pending(self, job: Job) -> list[str]:
        return [edit for edit in job.edits if not self.done(job, edit)]

    def tuned(self, job: Job) -> Path:
        """The clip's tuned weights, named by what they depend on: other settings tune again."""
        basis = [self.checkpoint, job.source_prompt, file_hash(job.clip) if job.clip.is_file() else str(job.clip),
                 *(job.settings[k] for k in TUNING_SETTINGS)]
        key = hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:12]
        return self.job_dir(job) / f"tuned-{key}.safetensors"

    def log(self, **event) -> None:
        with self._lock, open(self.folder / "events.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


# -- the runner -------------------------------------------------------------------------------------
class Worker:
    def __init__(self, runner: "BatchRunner", client: ComfyClient, position: int):
        self.runner, self.client = runner, client
        self.bar = runner.make_bar(position, client.url)
        self.error: str | None = None
        self.uploaded: dict[str, str] = {}  # local clip path -> name in the server's input folder

    def status(self, text: str) -> None:
        self.bar.set_description_str(f"{self.client.url} {text}"[:70])

    def on_message(self, kind: str, data: dict) -> None:
        if self.runner.on_message:
            self.runner.on_message(self.client.url, kind, data)
        if kind == "progress" and data.get("max"):
            self.bar.total = data["max"]
            self.bar.n = data["value"]
            self.bar.refresh()

    def run_clip(self, job: Job) -> None:
        runner, results, client = self.runner, self.runner.results, self.client
        clip_file = self.upload_clip(job)
        tuned = results.tuned(job)
        if not tuned.exists():
            self.status(f"{job.name}: tuning")
            started = time.monotonic()
            history, _ = client.run(tune_graph(job, runner.checkpoint, clip_file), runner.timeout, self.on_message)
            saved = history["outputs"]["save"]["text"][0]  # relative to output/tuneavideo
            subfolder, name = os.path.split(f"tuneavideo/{saved}")
            _write_atomic(tuned, client.view(name, subfolder))
            results.log(event="tuned", job=job.name, server=client.url, seconds=time.monotonic() - started)
            runner.note(f"{job.name}: tuned on {client.url} in {time.monotonic() - started:.1f} s")
        # The same name on every server, uploaded each time: another server may have tuned it.
        remote = f"{job.name}-{file_hash(tuned)[:12]}.safetensors"
        client.upload(tuned, remote, subfolder=f"tuneavideo/{REMOTE_DIR}", kind="output")
        for edit in results.pending(job):
            self.status(f"{job.name}/{edit}")
            started = time.monotonic()
            graph = edit_graph(job, edit, runner.checkpoint, clip_file, f"{REMOTE_DIR}/{remote}", runner.clip_model)
            history, cached = client.run(graph, runner.timeout, self.on_message)
            self.save_edit(job, edit, history, cached, time.monotonic() - started)

    def upload_clip(self, job: Job) -> str:
        source = self.runner.clip_file(job)
        if str(source) not in self.uploaded:
            name = f"{REMOTE_DIR}-{job.name}-{file_hash(source)[:12]}{source.suffix}"
            answer = self.client.upload(source, name)
            self.uploaded[str(source)] = os.path.join(answer.get("subfolder", ""), answer["name"])
        return self.uploaded[str(source)]

    def save_edit(self, job: Job, edit: str, history: dict, cached: set[str], seconds: float) -> None:
        results, folder = self.runner.results, self.runner.results.job_dir(job)
        video = history["outputs"]["savevideo"]["images"][0]
        local = folder / f"{edit}.mp4"
        data = self.client.view(video["filename"], video.get("subfolder", ""), video.get("type", "output"))
        _write_atomic(local, data)
        thumbnail = batch_report.thumbnail_strip(local, folder / f"{edit}.jpg")
        scores = (history["outputs"].get("score", {}).get("clip_score") or [{}])[0]
        record = {"job": job.name, "edit": edit, "clip": str(job.clip), "source_prompt": job.source_prompt,
                  "edited_prompt": job.edits[edit], "settings": job.settings, "checkpoint": self.runner.checkpoint,
                  "status": "done",
                  "video": f"{job.name}/{local.name}",
                  "thumbnail": f"{job.name}/{thumbnail.name}" if thumbnail else None,
                  "server": self.client.url, "seconds": round(seconds, 2),
                  "inversion_reused": INVERT_NODE in cached, **scores}
        _write_atomic(results.record_path(job, edit), json.dumps(record, indent=1).encode())
        results.log(event="edit", job=job.name, edit=edit, server=self.client.url, seconds=seconds)
        self.runner.edit_done(f"{job.name}/{edit} on {self.client.url} in {seconds:.1f} s")

    def loop(self) -> None:
        runner = self.runner
        while True:
            job = runner.take(self.client.url)
            if job is None:
                break
            try:
                self.run_clip(job)
            except ServerGone as e:
                self.error = str(e)
                runner.give_back(job, f"{self.client.url} is gone ({e}); {job.name} goes back to the queue")
                break
            except (PromptRejected, PromptFailed) as e:
                # Maybe this server's fault (a model it lacks, too little memory): the others try it too.
                runner.refused(job, self.client.url, str(e))
            except Exception as e:  # a bug or bad answer: keep the clip for another server, report it
                self.error = f"{type(e).__name__}: {e}"
                runner.give_back(job, f"{self.client.url} failed on {job.name} ({self.error}); requeued")
                break
            else:
                runner.finished()
        self.status("gone" if self.error else "idle")
        self.bar.close()


class BatchRunner:
    def __init__(self, jobs: JobsFile, servers: list[str], results: Path, checkpoint: str | None = None,
                 clip_model: str | None = None, timeout: float = 3600.0, progress: bool = True,
                 on_edit=None, on_message=None):
        """on_edit(line) follows every finished edit, on_message(url, type, data) every websocket message
        of every server."""
        self.jobs, self.checkpoint = jobs, checkpoint or jobs.checkpoint
        if not self.checkpoint:
            raise JobsError("no checkpoint: pass --checkpoint or set checkpoint: in the jobs file")
        self.results = Results(results, self.checkpoint)
        self.clip_model = clip_model or jobs.clip_model
        self.servers, self.timeout, self.progress = servers, timeout, progress
        self.on_edit, self.on_message = on_edit, on_message
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._in_flight = 0
        self._refusals: dict[str, dict[str, str]] = {}  # job -> server -> why it failed there
        self.work_done = 0

    def make_bar(self, position: int, label: str):
        from tqdm import tqdm

        return tqdm(total=0, position=position, desc=label, leave=False, disable=not self.progress,
                    file=sys.stderr, dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.progress:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def clip_file(self, job: Job) -> Path:
        """The clip as a video file: a folder of frames is encoded once into the results folder."""
        if job.clip.is_file():
            return job.clip
        encoded = self.results.job_dir(job) / "clip.avi"
        with self._cond:
            if not encoded.exists():
                batch_report.frames_to_video(job.clip, encoded, job.settings["fps"])
        return encoded

    # -- the queue, shared by the workers -------------------------------------------------------
    def take(self, url: str) -> Job | None:
        """The next clip that this server has not refused; None once nothing is left for it."""
        with self._cond:
            while True:
                for job in self._queue:
                    if url not in self._refusals.get(job.name, {}):
                        self._queue.remove(job)
                        self._in_flight += 1
                        return job
                if self._in_flight == 0:
                    return None
                self._cond.wait()

    def finished(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def give_back(self, job: Job, why: str) -> None:
        self.note(why)
        with self._cond:
            self._queue.appendleft(job)
            self._in_flight -= 1
            self._cond.notify_all()

    def refused(self, job: Job, server: str, why: str) -> None:
        """The server refused the clip's prompt or a node failed: back to the queue for the others."""
        self.results.log(event="refused", job=job.name, server=server, error=why)
        self.note(f"{job.name} failed on {server}: {why}")
        with self._cond:
            self._refusals.setdefault(job.name, {})[server] = why
            self._queue.append(job)
            self._in_flight -= 1
            self._cond.notify_all()

    def edit_done(self, line: str) -> None:
        with self._cond:
            self.work_done += 1
        self.overall.update(1)
        self.note(line)
        if self.on_edit:
            self.on_edit(line)

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        started = time.monotonic()
        pending = {job.name: self.results.pending(job) for job in self.jobs.jobs}
        self._queue.extend(job for job in self.jobs.jobs if pending[job.name])
        total = sum(len(job.edits) for job in self.jobs.jobs)
        from tqdm import tqdm

        self.overall = tqdm(total=total, initial=total - sum(map(len, pending.values())), position=0,
                            desc="edits", disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        gone, failures = {}, {}
        if self._queue:
            clients = [ComfyClient(url) for url in self.servers]
            alive = [c for c in clients if c.alive()]
            gone = {c.url: "did not answer at start" for c in clients if c not in alive}
            workers = [Worker(self, client, i + 1) for i, client in enumerate(alive)]
            threads = [threading.Thread(target=w.loop, name=w.client.url, daemon=True) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            gone.update({w.client.url: w.error for w in workers if w.error})
            if len(gone) < len(clients):  # a server is still up: what is left, every live one refused
                failures = {job.name: "; ".join(f"{url}: {why}" for url, why in
                                                self._refusals.get(job.name, {}).items()) for job in self._queue}
                self._queue.clear()
        self.overall.close()
        records = batch_report.write_report(self.results.folder, self.jobs.jobs, failures,
                                            time.monotonic() - started, self.checkpoint)
        if self._queue:
            left = ", ".join(f"{job.name} ({len(self.results.pending(job))} edits)" for job in self._queue)
            reasons = "; ".join(f"{url}: {why}" for url, why in gone.items()) or "no server was given"
            raise AllServersGone(f"every server is gone ({reasons}). Left to do: {left}. What is done is "
                                 f"saved in {self.results.folder}; run again with a working server to finish.")
        return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tav_core.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", type=Path, help="the jobs file (.yaml or .csv)")
    parser.add_argument("--server", action="append", required=True,
                        help="a ComfyUI server URL with this pack installed (repeat for several: one clip at a "
                             "time runs on each)")
    parser.add_argument("--results", type=Path, default=Path("batch-results"), help="results folder")
    parser.add_argument("--checkpoint", help="the SD checkpoint's name as the servers list it")
    parser.add_argument("--clip-model", help="a CLIP folder in the servers' models/clip_scoring: score each edit")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one prompt may take")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        runner = BatchRunner(load_jobs(args.jobs), args.server, args.results, args.checkpoint, args.clip_model,
                             args.timeout, not args.no_progress)
        records = runner.run()
    except (JobsError, AllServersGone) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = sum(r["status"] == "done" for r in records)
    print(f"{done} of {len(records)} edits done; report: {args.results / 'report.html'}")
    return 0 if done == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
