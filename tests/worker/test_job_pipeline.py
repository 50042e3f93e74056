"""The job pipeline in-process, over a stub engine and a stub source: batching, windows,
the stop deadline, abort, every error as an outcome, deferred and refused jobs."""

from __future__ import annotations

import time

from contract.errors import Cancelled, GenerationFailed
from tests.support.stub_engine import StubEngine
from tests.support.stub_source import StubSource, make_job
from tests.worker.conftest import run_in_thread
from worker.jobs import Status


def error_type(source: StubSource, name: str) -> str | None:
    record = source.outcomes[name].record
    return record.error.type if record and record.error else None


def test_ready_jobs_run_in_batches_of_one_key(stub_pipeline, stub_engine, stub_source):
    pipeline = stub_pipeline(max_batch_size=3)
    jobs = [make_job(f"small{i}", size=64) for i in range(5)]
    jobs += [make_job(f"large{i}", size=128) for i in range(2)]
    for job in jobs:
        pipeline.submit(job)
    pipeline.run(until=lambda: stub_source.settled() >= len(jobs))

    assert {name: o.status for name, o in stub_source.outcomes.items()} == {
        job.job_id: Status.DONE for job in jobs}
    ran = sorted(name for _, names in stub_engine.batches for name in names)
    assert ran == sorted(job.job_id for job in jobs)
    for key, names in stub_engine.batches:
        assert 1 <= len(names) <= 3
        assert {name.rstrip("0123456789") for name in names} == {
            "small" if key.width == 64 else "large"}


def test_windows_make_the_same_batches_whatever_the_order_inputs_are_read_in(stub_pipeline):
    def batches_when(prepare_seconds) -> list[list[str]]:
        engine, source = StubEngine(), StubSource(prepare_seconds=prepare_seconds)
        pipeline = stub_pipeline(engine=engine, source=source, max_batch_size=4,
                                 prefetch_jobs=4, same_batches_every_run=True)
        for i in range(8):
            pipeline.submit(make_job(f"j{i}"))
        pipeline.run(until=lambda: source.settled() >= 8)
        return [names for _, names in engine.batches]

    last_read_first = batches_when(lambda job: 0.04 * (8 - int(job.job_id[1:])))
    first_read_first = batches_when(lambda job: 0.01 * int(job.job_id[1:]))
    assert last_read_first == first_read_first == [
        ["j0", "j1", "j2", "j3"], ["j4", "j5", "j6", "j7"]]


def test_a_batch_that_would_not_fit_the_stop_deadline_is_released_unrun(
        stub_pipeline, stub_engine, stub_source):
    stub_engine.seconds = 0.3
    pipeline = stub_pipeline(max_batch_size=2)
    loop = run_in_thread(pipeline, until=lambda: stub_source.settled() >= 4)
    for name in ("a", "b"):
        pipeline.submit(make_job(name))
    stub_source.wait_settled(2)  # 0.15 s per image, measured
    pipeline.stop(time.monotonic() + 0.1)
    for name in ("c", "d"):
        pipeline.submit(make_job(name))
    stub_source.wait_settled(4)
    loop.join(timeout=5)

    # a and b ran (one batch, or two when one was prepared first); c and d did not.
    assert sorted(name for _, names in stub_engine.batches for name in names) == ["a", "b"]
    assert {error_type(stub_source, n) for n in ("c", "d")} == {"Interrupted"}
    assert "stopping" in stub_source.outcomes["c"].record.error.message


def test_a_running_batch_stops_between_steps_once_the_deadline_passed(
        stub_pipeline, stub_engine, stub_source):
    stub_engine.seconds, stub_engine.steps = 5.0, 50
    pipeline = stub_pipeline()
    loop = run_in_thread(pipeline, until=lambda: stub_source.settled() >= 2)
    started = time.monotonic()
    for name in ("a", "b"):
        pipeline.submit(make_job(name))
    assert stub_engine.started.wait(5)
    pipeline.stop(time.monotonic() + 0.2)
    stub_source.wait_settled(2)
    loop.join(timeout=5)

    assert time.monotonic() - started < 3.0  # not the batch's 5 s
    assert {error_type(stub_source, n) for n in ("a", "b")} == {"GenerationInterrupted"}


def test_abort_stops_the_running_batch_and_leaves_the_rest_to_the_owner(
        stub_pipeline, stub_engine, stub_source):
    stub_engine.seconds, stub_engine.steps = 5.0, 50
    pipeline = stub_pipeline(max_batch_size=1)
    loop = run_in_thread(pipeline, until=lambda: False)
    for name in ("running", "ready1", "ready2"):
        pipeline.submit(make_job(name))
    assert stub_engine.started.wait(5)
    pipeline.abort()
    loop.join(timeout=3)

    assert not loop.is_alive()
    stub_source.wait_settled(1)
    # The jobs are prepared side by side: whichever was ready first ran.
    [(_, [ran])] = stub_engine.batches
    assert error_type(stub_source, ran) == "GenerationInterrupted"
    # Ready jobs are not ended by an abort: the fleet releases their messages itself.
    assert set(stub_source.outcomes) == {ran}


def test_a_generation_over_its_timeout_fails_as_timeout(stub_pipeline, stub_engine,
                                                         stub_source):
    stub_engine.seconds, stub_engine.steps = 4.0, 40
    pipeline = stub_pipeline()
    pipeline.submit(make_job("slow", timeout_seconds=1))
    pipeline.run(until=lambda: stub_source.settled() >= 1)

    assert error_type(stub_source, "slow") == "Timeout"
    assert "over its 1 s timeout" in stub_source.outcomes["slow"].record.error.message


def test_every_error_becomes_the_jobs_outcome_and_an_unrecordable_one_is_lost(
        stub_pipeline, stub_engine, stub_source):
    stub_source.prepare_error = lambda job: (
        OSError("disk gone") if job.job_id in ("unreadable", "unrecordable") else None)
    stub_source.write_error = lambda job: (
        OSError("disk full") if job.job_id == "unwritable" else None)
    stub_source.failure_error = lambda job: (
        RuntimeError("no record either") if job.job_id == "unrecordable" else None)
    stub_engine.fail = lambda key, items: (
        GenerationFailed("the GPU said no") if key.width == 128 else None)
    pipeline = stub_pipeline()
    jobs = [make_job("unreadable"), make_job("unwritable"), make_job("unrecordable"),
            make_job("fine"), make_job("in-a-failing-batch", size=128)]
    for job in jobs:
        pipeline.submit(job)
    pipeline.run(until=lambda: stub_source.settled() >= len(jobs))

    assert error_type(stub_source, "unreadable") == "OSError"
    assert error_type(stub_source, "unwritable") == "OSError"
    assert error_type(stub_source, "in-a-failing-batch") == "GenerationFailed"
    assert stub_source.outcomes["fine"].status is Status.DONE
    assert set(stub_source.lost_jobs) == {"unrecordable"}
    assert "no record either" in str(stub_source.lost_jobs["unrecordable"])


def test_deferred_jobs_count_against_the_prefetch_until_submitted_again(
        stub_pipeline, stub_source):
    stub_source.defer = lambda job: True
    pipeline = stub_pipeline(prefetch_jobs=2)
    for name in ("x", "y"):
        pipeline.submit(make_job(name))
    deadline = time.monotonic() + 5
    while stub_source.holding() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stub_source.holding() == 2
    assert pipeline.capacity() == 0 and not pipeline.idle

    for job in stub_source.release_held():
        pipeline.submit(job)
    pipeline.run(until=lambda: stub_source.settled() >= 2)
    assert {o.status for o in stub_source.outcomes.values()} == {Status.DONE}
    assert pipeline.capacity() == 2


def test_refused_and_unwanted_jobs_never_reach_the_engine(stub_pipeline, stub_engine,
                                                           stub_source):
    stub_source.refuse = lambda job: (
        Cancelled("cancelled before it started") if job.job_id == "cancelled" else None)
    stub_source.unwanted = {"released"}
    pipeline = stub_pipeline()
    for name in ("cancelled", "released", "kept"):
        pipeline.submit(make_job(name))
    pipeline.run(until=lambda: stub_source.settled() >= 3)

    assert [names for _, names in stub_engine.batches] == [["kept"]]
    assert error_type(stub_source, "cancelled") == "Cancelled"
    assert stub_source.dropped_jobs == ["released"]


def test_a_model_that_never_loaded_charges_no_gpu_time_and_logs_no_traceback(
        stub_pipeline, stub_source, model_cache, tmp_path, caplog):
    """The real engine, asked for a model folder that is not a model."""
    from worker.engine.engine import Engine
    from worker.settings import WorkerSettings

    missing = tmp_path / "no-model"
    missing.mkdir()
    engine = Engine(WorkerSettings(model_cache=model_cache, allowed_models=[str(missing)],
                                   device="cpu"))
    pipeline = stub_pipeline(engine=engine)
    jobs = [make_job(f"m{i}", model=str(missing)) for i in range(2)]
    for job in jobs:
        pipeline.submit(job)
    with caplog.at_level("WARNING"):
        pipeline.run(until=lambda: stub_source.settled() >= len(jobs))

    for job in jobs:
        record = stub_source.outcomes[job.job_id].record
        assert record.status == "failed" and record.error.type == "ModelNotFound"
        assert record.gpu_seconds is None and record.cost_usd is None
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failures and all(r.exc_info is None for r in failures)
    assert "no model_index.json" in failures[0].getMessage()
