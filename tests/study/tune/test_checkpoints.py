"""The study's own deletion of superseded one-worker checkpoints (no Ray): a checkpoint goes only once a newer
one of its trial has been registered for the whole grace time, the newest never, and what a killed study left
in a trial's folder is found and goes the same way."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from study.tune.checkpoints import CheckpointPruner


class Clock:
    """Time the test sets, so that the grace time is measured without waiting for it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def checkpoint(trial_dir: Path, index: int) -> str:
    folder = trial_dir / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"weights")
    return str(folder)


def test_a_checkpoint_goes_only_after_a_newer_one_was_registered_for_the_grace_time(tmp_path: Path) -> None:
    clock, fs = Clock(), pafs.LocalFileSystem()
    pruner = CheckpointPruner(keep_after_superseded_s=20.0, clock=clock)
    trial = tmp_path / "run_trial_a"
    first = checkpoint(trial, 0)
    pruner.register("a", fs, first)
    clock.now += 60
    assert pruner.prune() == [] and Path(first).is_dir()  # the newest stays, however old

    second = checkpoint(trial, 1)
    pruner.register("a", fs, second)
    clock.now += 19.9
    third = checkpoint(trial, 2)
    pruner.register("a", fs, third)  # supersedes `second` from now; `first` keeps its earlier time
    assert pruner.prune() == [] and Path(first).is_dir()  # 19.9 s < 20 s since `second` superseded it
    clock.now += 0.1
    assert pruner.prune() == [first] and not Path(first).exists()
    assert pruner.kept("a") == [second, third]
    clock.now += 20
    assert pruner.prune() == [second] and pruner.kept("a") == [third] and Path(third).is_dir()


def test_checkpoints_a_killed_study_left_are_found_and_trials_are_kept_apart(tmp_path: Path) -> None:
    clock, fs = Clock(), pafs.LocalFileSystem()
    pruner = CheckpointPruner(keep_after_superseded_s=5.0, clock=clock)
    left = [checkpoint(tmp_path / "run_trial_a", i) for i in range(3)]  # from before --resume
    other = checkpoint(tmp_path / "run_trial_b", 0)
    pruner.register("b", fs, other)
    new = checkpoint(tmp_path / "run_trial_a", 3)
    pruner.register("a", fs, new)
    assert pruner.kept("a") == [*left, new]
    clock.now += 5
    assert sorted(pruner.prune()) == left
    assert [p.name for p in (tmp_path / "run_trial_a").iterdir()] == ["checkpoint_000003"]
    assert Path(other).is_dir() and pruner.kept("b") == [other]


def test_the_pruner_pickles_without_its_bookkeeping(tmp_path: Path) -> None:
    import pickle

    pruner = CheckpointPruner(keep_after_superseded_s=7.0)
    pruner.register("a", pafs.LocalFileSystem(), checkpoint(tmp_path / "t", 0))
    again = pickle.loads(pickle.dumps(pruner))
    assert again.keep_after_superseded_s == 7.0 and again.kept("a") == []
