"""The batched enqueue marks: start, close and add from many threads without a race."""

import threading
import uuid

from core.enqueue_marks import EnqueueMarks


def test_close_while_other_threads_add_never_fails(monkeypatch):
    written: list[uuid.UUID] = []
    monkeypatch.setattr(
        "core.enqueue_marks.mark_enqueued", lambda _factory, _clock, ids: written.extend(ids)
    )
    for _ in range(200):
        marks = EnqueueMarks(session_factory=None, clock=lambda: None, interval=0.001)  # type: ignore[arg-type]
        ids = [uuid.uuid4() for _ in range(4)]
        adders = [threading.Thread(target=marks.add, args=([i],)) for i in ids]
        for thread in adders:
            thread.start()
        marks.close()
        for thread in adders:
            thread.join()
        marks.close()  # twice is fine


def test_close_writes_what_is_pending(monkeypatch):
    written: list[uuid.UUID] = []
    monkeypatch.setattr(
        "core.enqueue_marks.mark_enqueued", lambda _factory, _clock, ids: written.extend(ids)
    )
    marks = EnqueueMarks(session_factory=None, clock=lambda: None, interval=60)  # type: ignore[arg-type]
    ids = [uuid.uuid4() for _ in range(3)]
    marks.add(ids)
    marks.close()
    assert written == ids
