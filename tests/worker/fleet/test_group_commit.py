"""Group commit, and the group markers it writes: jobs that end together are handled in
one commit, and one marker names them all without losing any to S3's key limit."""

from __future__ import annotations

import threading

from contract.locations import MAX_KEY_BYTES, batch_marker_keys, marker_jobs
from worker.fleet.group_commit import GroupCommit


def test_items_that_arrive_while_one_commits_go_in_the_next_commit_together():
    commits: list[list[int]] = []
    first_in = threading.Event()
    release = threading.Event()

    def commit(items: list[int]) -> None:
        commits.append(items)
        first_in.set()
        release.wait(5)

    group = GroupCommit(commit, linger=0)
    leader = threading.Thread(target=group.add, args=(0,))
    leader.start()
    assert first_in.wait(5)
    followers = [threading.Thread(target=group.add, args=(i,)) for i in range(1, 9)]
    for thread in followers:
        thread.start()
    for thread in followers:
        thread.join(5)
        assert not thread.is_alive(), "a follower returns at once"
    release.set()
    leader.join(5)
    assert commits[0] == [0] and sorted(commits[1]) == list(range(1, 9))
    assert len(commits) == 2


def test_group_markers_name_every_job_and_fit_in_an_s3_key():
    job_ids = [f"{i:032x}" for i in range(100)]
    output_key = "out/" + "deep/" * 30 + "x.png"
    keys = batch_marker_keys(output_key, "batch-1", job_ids, "done")
    assert 1 < len(keys) < 10
    assert all(len(key.encode()) <= MAX_KEY_BYTES for key in keys)
    named = [job_id for key in keys for job_id in marker_jobs(key)[0]]
    assert named == job_ids
    assert {marker_jobs(key)[1] for key in keys} == {"done"}
    assert marker_jobs("out/_batches/b/abc.failed") == (["abc"], "failed")
    assert marker_jobs("out/_batches/b/manifest.json")[1] == "json"
