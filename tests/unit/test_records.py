"""recordInfo's in-memory answers (``api.context.Records``): kept per view, finished tasks read once."""

from __future__ import annotations

from decimal import Decimal

from seedbed.api.context import Records
from seedbed.store.memory import MemoryStore
from seedbed.tasks import NewKey, NewTask, Outcome, TaskState, TaskView


def _view(task_id: str, state: TaskState, progress: int = 0) -> TaskView:
    return TaskView(
        task_id, "k1", "m", state, "{}", (), None, None, progress, Decimal(0), 1, 1, None, 0
    )


def test_an_answer_is_rendered_once_per_view_and_base_url() -> None:
    records = Records()
    renders: list[str] = []

    def render(label: str) -> bytes:
        renders.append(label)
        return label.encode()

    waiting = _view("t1", TaskState.WAITING)
    assert records.body(waiting, "http://a", lambda: render("w")) == b"w"
    assert records.body(waiting, "http://a", lambda: render("again")) == b"w"
    assert records.body(waiting, "http://b", lambda: render("wb")) == b"wb"  # other links
    # an equal but new view (the store read the task again): rendered afresh
    moved = _view("t1", TaskState.WAITING, progress=10)
    assert records.body(moved, "http://a", lambda: render("m")) == b"m"
    assert renders == ["w", "wb", "m"]


def test_answers_are_bounded() -> None:
    records = Records()
    records.MAX_ENTRIES = 3
    views = [_view(f"t{i}", TaskState.WAITING) for i in range(5)]
    for view in views:
        records.body(view, "http://a", lambda: b"x")
    calls: list[int] = []
    records.body(views[0], "http://a", lambda: calls.append(0) or b"x")  # evicted: again
    records.body(views[4], "http://a", lambda: calls.append(4) or b"x")  # kept
    assert calls == [0]


async def test_a_finished_task_is_read_from_the_store_once() -> None:
    store = MemoryStore()
    await store.open()
    await store.create_key(NewKey(id="k1", name="k", key_hash="h", credits=Decimal(5)))
    new = NewTask(
        id="t" * 32,
        key_id="k1",
        model="m",
        param="{}",
        input={},
        callback_url=None,
        reserve=Decimal(1),
    )
    await store.create_task(new, open_task_cap=10)
    records = Records()
    first = await records.poll(new.id, store)
    assert first is not None and first.state is TaskState.WAITING
    assert await records.poll(new.id, store) is not first  # open: read each time
    await store.finish(new.id, Outcome.failure("500", "x"), worker_id=None)
    done = await records.poll(new.id, store)
    assert done is not None and done.state is TaskState.FAIL
    assert await records.poll(new.id, store) is done
