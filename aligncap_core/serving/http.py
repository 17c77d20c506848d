"""The HTTP captioning service (FastAPI on uvicorn): `aligncap serve --model ...`.

    POST /caption   multipart upload, field `file` (WAV/FLAC/OGG/MP3: what soundfile reads)
                    -> 200 {"caption", "attributes", "withheld", "told", "struck", "unsure",
                           "model_version", "seconds", "file"}
                    -> 400 undecodable/empty audio, 413 over --max-mb or --max-seconds,
                       422 no `file` field, 503 queue full (retry later); each with {"detail"}
    GET  /health    -> {"status": "ok", "model", "model_version", "dtype", "queued", "served",
                        "batches", "largest_batch"}

Under load requests are batched: uploads are decoded on the request threads, then queued; one
worker takes up to `max_batch` queued clips (waiting at most `max_wait_ms` after the first for
more to arrive) and captions them in one `CaptionEngine.caption` call on its own thread, so the
event loop keeps accepting while the model runs. Bound to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from aligncap_core.errors import DataError

DEFAULT_MAX_MB = 20.0
_MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a request body


@dataclass
class _Job:
    wave: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    served: int = 0
    batches: int = 0
    largest_batch: int = 0


class Batcher:
    """Collects queued clips into batches for one model worker (module doc)."""

    def __init__(self, engine: Any, max_batch: int, max_wait_s: float, max_queue: int) -> None:
        self.engine, self.max_batch, self.max_wait_s = engine, max_batch, max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()

    def submit(self, wave: np.ndarray) -> asyncio.Future:
        """A future of the clip's result; raises asyncio.QueueFull when the queue is full."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Job(wave, fut))
        return fut

    async def _take(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return jobs

    async def run(self) -> None:
        while True:
            jobs = await self._take()
            try:
                results = await asyncio.to_thread(self.engine.caption, [j.wave for j in jobs])
            except Exception as e:  # noqa: BLE001 - every waiting request must get an answer
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            s = self.stats
            s.served += len(jobs)
            s.batches += 1
            s.largest_batch = max(s.largest_batch, len(jobs))
            for j, r in zip(jobs, results, strict=True):
                if not j.future.done():  # the client may have gone away
                    j.future.set_result(r)


def _too_long(e: DataError) -> bool:
    from aligncap_core.data.audio import AudioProblem

    return (isinstance(e.__cause__, AudioProblem) and e.__cause__.code == "too_long") or "longer than" in str(e)


def create_app(engine: Any, *, max_mb: float = DEFAULT_MAX_MB, max_batch: int = 16,
               max_wait_ms: float = 10.0, max_queue: int = 256) -> FastAPI:
    """The FastAPI app serving `engine` (a `CaptionEngine`); limits as in the module doc."""
    max_bytes = int(max_mb * 1024 * 1024)
    batcher = Batcher(engine, max_batch, max_wait_ms / 1000, max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    app = FastAPI(title="aligncap", description="Speech emotion captioning", lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def refuse_big_bodies(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > max_bytes + _MULTIPART_SLACK:
            return JSONResponse({"detail": f"upload is {int(size) / 2**20:.1f} MB, over the "
                                           f"{max_mb:g} MB limit; send a shorter clip"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        s = batcher.stats
        return {"status": "ok", "model": engine.model.uri, "model_version": engine.version,
                "queued": batcher.queue.qsize(), "served": s.served, "batches": s.batches,
                "largest_batch": s.largest_batch, "dtype": engine.captioner.dtype_name}

    @app.post("/caption")
    async def caption(file: UploadFile = File(..., description="the audio file")) -> dict:
        name = file.filename or "upload"
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"{name}: upload is over the {max_mb:g} MB limit; send a shorter clip")
        if not data:
            raise HTTPException(400, f"{name}: the upload is empty")
        try:
            wave = await run_in_threadpool(engine.waveform, data, name)
        except DataError as e:
            raise HTTPException(413 if _too_long(e) else 400, str(e)) from e
        try:
            fut = batcher.submit(wave)
        except asyncio.QueueFull as e:
            raise HTTPException(503, f"{max_queue} clips are waiting; retry shortly",
                                headers={"Retry-After": "1"}) from e
        result = await fut
        return {**result, "model_version": engine.version,
                "seconds": round(len(wave) / engine.sample_rate, 3), "file": name}

    return app


def serve(engine: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **limits: Any) -> None:
    """Run the service until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    import uvicorn

    uvicorn.run(create_app(engine, **limits), host=host, port=port, log_level=log_level,
                workers=1)  # one process: the model is loaded once and batched, not copied
