"""Training batches read ahead in a background thread while the device works on the current one.

On a GPU the loader's host work (gathering sequences across shards, converting, pinning) and the
copy to the device would otherwise sit between two steps with the device idle; here the copy runs
on a CUDA stream of its own, and the step waits for it on an event. `Prefetched` yields the loader's
batches, in the loader's order, moved to the device, and names the loader's state *as of the last
batch taken*, so a checkpoint resumes exactly where training was, not where the read-ahead was.
With `ahead=0` it reads synchronously (the CPU path: a thread would compete with training for the
same cores).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch

_POLL_S = 0.1


class Prefetched:
    """Iterator over `loader`'s batches on `device`, up to `ahead` of them read in advance.

    Use as a context manager (or call `close`) so the thread ends with the training. An error in
    the loader (a corrupt shard, say) is raised from `next` with its own message."""

    def __init__(self, loader: Any, device: torch.device, ahead: int) -> None:
        self.loader, self.device = loader, device
        self._state = loader.state_dict()
        self.counted_tokens = 0  # the counted (non-special) tokens of the last batch taken, read on the host
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(ahead, 1))
        self._thread = threading.Thread(target=self._read, name="tsae-prefetch", daemon=True) if ahead > 0 else None
        if self._thread is not None:
            self._thread.start()

    def _read(self) -> None:
        cuda = self.device.type == "cuda"
        copies = torch.cuda.Stream(self.device) if cuda else None
        try:
            while not self._stop.is_set():
                batch, ready = next(self.loader), None
                counted = int(batch.mask_BT.sum())  # on the host copy: no device sync in the step
                if cuda:  # copied on a stream of its own, so the copy overlaps the step on the default stream
                    with torch.cuda.stream(copies):
                        batch = batch.pinned().to(self.device)
                        ready = torch.cuda.Event()
                        ready.record(copies)
                self._put((batch, ready, counted, self.loader.state_dict()))
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            self._put((e, None, 0, None))

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self):
        if self._thread is None:
            batch = next(self.loader)
            self.counted_tokens = int(batch.mask_BT.sum())
            return batch.to(self.device)
        batch, ready, self.counted_tokens, state = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self._state = state
        if ready is None:
            return batch.to(self.device)
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(ready)
        for t in vars(batch).values():  # memory made on the copy stream, used on this one
            if t is not None:
                t.record_stream(stream)
        return batch

    def state_dict(self) -> dict[str, int]:
        """The loader's state after the last batch `next` returned: resuming from it yields the next one."""
        return self.loader.state_dict() if self._thread is None else dict(self._state)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> Prefetched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
