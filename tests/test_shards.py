"""Each DDP rank makes only its shard of the global batch, and the shards of any number of ranks
join into the batch one process makes (no processes needed: ``Batches`` takes a rank and a world)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from deqloop import seeds
from deqloop.seeds import LaneStreams
from deqloop.tasks import Task, get_task
from deqloop.tasks.sudoku_blanks import draw_blanks_lanes, generate_blanks
from deqloop.tasks.sudoku_data import draw_lanes
from deqloop.tasks.sudoku_examples import draw_examples
from deqloop.tasks.sudoku_solver import _search, is_valid_solution
from deqloop.train import Batches

B = 8


def splitmix64(state: int) -> tuple[int, int]:
    """The reference generator written out on Python integers: ``(next state, output)``."""
    mask = 2**64 - 1
    state = (state + 0x9E3779B97F4A7C15) & mask
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return state, z ^ (z >> 31)


def test_example_seeds_are_splitmix64_of_the_streams_seed_and_any_range_agrees():
    assert splitmix64(0)[1] == 0xE220A8397B1DCDAF  # the published first output from state 0
    state, outputs = seeds.derive_seed(7, seeds.BATCH, 3), []
    for _ in range(6):
        state, out = splitmix64(state)
        outputs.append(out >> 1)
    assert seeds.example_seeds(0, 6, 7, seeds.BATCH, 3) == outputs
    assert seeds.example_seeds(2, 5, 7, seeds.BATCH, 3) == outputs[2:5]
    assert seeds.example_seeds(4, 4, 7, seeds.BATCH, 3) == []
    assert seeds.example_seeds(0, 3, 7, seeds.BATCH, 4) != outputs[:3]  # another step, other seeds
    with pytest.raises(ValueError, match=r"0 <= start <= stop, got \[3, 2\)"):
        seeds.example_seeds(3, 2, 7)


def sudoku_file(tmp_path) -> str:
    x, y = generate_blanks(40, (4, 8), seed=1, cache_dir=str(tmp_path))
    path = tmp_path / "puzzles.csv"
    with open(path, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["source", "question", "answer", "rating"])
        for q, a in zip(x.flatten(1).tolist(), y.flatten(1).tolist()):
            rows.writerow(["made", "".join(map(str, q)), "".join(map(str, a)), 0])
    return str(path)


CASES = {
    "prefix_sums curriculum": lambda tmp: (get_task("prefix_sums", length=9, min_length=3), 0),
    "prefix_sums pool": lambda tmp: (get_task("prefix_sums", length=5), 24),
    "sudoku generated, augmented": lambda tmp: (get_task("sudoku", blanks=(4, 8), augment=True, cache_dir=str(tmp)), 0),
    "sudoku file, augmented": lambda tmp: (get_task("sudoku", data=sudoku_file(tmp), augment=True), 0),
    "chess generated": lambda tmp: (get_task("chess", train_pieces=(4, 5)), 0),
}


@pytest.mark.parametrize("case", CASES)
def test_the_shards_of_any_world_size_join_into_the_one_process_batch(tmp_path, case):
    task, train_size = CASES[case](tmp_path)
    for step in (0, 3):
        x, y = Batches(task, B, seed=2, train_size=train_size)(step)
        assert x.shape[0] == B
        for world in (2, 4):
            shards = [Batches(task, B, seed=2, train_size=train_size, rank=r, world=world)(step) for r in range(world)]
            assert all(len(sx) == B // world for sx, _ in shards)
            assert torch.equal(torch.cat([sx for sx, _ in shards]), x), (step, world)
            assert torch.equal(torch.cat([sy for _, sy in shards]), y), (step, world)
    other = Batches(task, B, seed=2, train_size=train_size)(1)[0]
    assert not torch.equal(other, x)  # another step, another batch


def test_sudoku_from_a_file_draws_as_before_and_augments_each_example_by_its_seed(tmp_path):
    task = get_task("sudoku", data=sudoku_file(tmp_path))
    x, y = Batches(task, B, seed=2)(5)
    step_seed = seeds.derive_seed(2, seeds.BATCH, 5) % 2**31
    assert torch.equal(x, task.make("train", B, seed=step_seed)[0])  # the draw make() makes
    augmenting = get_task("sudoku", data=task.data, augment=True)
    ax, ay = Batches(augmenting, B, seed=2, rank=1, world=2)(5)  # examples 4..7
    for i, s in enumerate(seeds.example_seeds(4, 8, 2, seeds.AUGMENT, 5)):
        ex, ey = augmenting.augment_batch(x[4 + i : 5 + i], y[4 + i : 5 + i], torch.Generator().manual_seed(s))
        assert torch.equal(ax[i : i + 1], ex) and torch.equal(ay[i : i + 1], ey)


@dataclass(frozen=True)
class Counting(Task):
    """Example ``i`` of a batch seeded ``s`` is ``[s % 1000]``; counts the examples it makes."""

    name: ClassVar[str] = "counting"
    vocab_size: ClassVar[int] = 1000
    num_classes: ClassVar[int] = 1000
    grid: ClassVar[tuple[int, ...]] = (1,)
    made: list = None  # type: ignore[assignment]

    def make(self, split, n, seed=0):
        self.made.append((split, n, seed))
        x = torch.full((n, 1), seed % 1000)
        return x, x.clone()


def test_each_rank_makes_only_its_own_examples_with_their_own_seeds():
    for rank in range(4):
        task = Counting(made=[])
        x, _ = Batches(task, 16, seed=3, rank=rank, world=4)(7)
        mine = [s % 2**31 for s in seeds.example_seeds(4 * rank, 4 * rank + 4, 3, seeds.BATCH, 7)]
        assert task.made == [("train", 1, s) for s in mine]  # 4 examples of 16, each made once
        assert x.flatten().tolist() == [s % 1000 for s in mine]


def test_prefix_sums_ranks_draw_only_their_rows(monkeypatch):
    asked = []
    real = seeds.example_seeds
    monkeypatch.setattr(seeds, "example_seeds", lambda start, stop, *keys: asked.append((start, stop, keys)) or
                        real(start, stop, *keys))
    x, y = Batches(get_task("prefix_sums", length=6), 12, seed=1, rank=2, world=3)(4)
    assert asked == [(8, 12, (1, seeds.BATCH, 4))]
    bits = [torch.randint(0, 2, (6,), generator=torch.Generator().manual_seed(s)) for s in real(8, 12, 1, seeds.BATCH, 4)]
    assert torch.equal(x, torch.stack(bits)) and torch.equal(y, torch.cumsum(x, 1) % 2)


def test_a_task_overriding_the_old_whole_batch_method_is_told_what_replaced_it():
    with pytest.raises(TypeError, match=r"Old overrides train_batch; override train_examples\(seed, step, start, stop\)"):
        type("Old", (Task,), {"train_batch": lambda self, n, seed, step: None})


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="rank 0 of 3 processes cannot take an equal shard of batch 8"):
        Batches(get_task("prefix_sums"), 8, seed=0, world=3)


@pytest.mark.parametrize("settings", [dict(blanks=(4, 8)), dict(train_band=(1, 3))], ids=["blanks", "rating band"])
def test_generated_sudoku_examples_are_unique_puzzles_of_the_band_each_from_its_own_seed(settings):
    task = get_task("sudoku", **settings)
    x, y = task.train_examples(seed=4, step=2, start=0, stop=6)
    grids = x.flatten(1).numpy().astype(np.int8)
    assert bool(is_valid_solution(y).all()) and bool(((x == 0) | (x == y)).all())
    assert (_search(grids, 2, hidden=True).count == 1).all()  # unique
    if "blanks" in settings:
        assert ((x == 0).flatten(1).sum(1) >= 4).all() and ((x == 0).flatten(1).sum(1) <= 8).all()
    else:
        guesses = _search(grids, 2, hidden=False).guesses
        assert ((guesses >= 1) & (guesses <= 3)).all(), guesses
    # example 3 alone, or beside others in another order, is the same puzzle
    example_seeds = seeds.example_seeds(0, 6, 4, seeds.BATCH, 2)
    draw = (lambda rng, lanes: draw_blanks_lanes(4, 8, rng, lanes)) if "blanks" in settings else (
        lambda rng, lanes: (lambda p, s, r, a: (p, s, a))(*draw_lanes(1, 3, rng, lanes)))
    alone = draw_examples([example_seeds[3]], draw)[0]
    shuffled = draw_examples([example_seeds[i] for i in (5, 3, 0)], draw)[0]
    assert torch.equal(alone[0], x[3]) and torch.equal(shuffled[1], x[3]) and torch.equal(shuffled[0], x[5])


def test_lane_streams_draw_a_lanes_numbers_whatever_lanes_draw_beside_it():
    both = LaneStreams([21, 22])
    first, rows = both.random((2, 3)), both.random_rows(np.array([1]), 4)
    alone = LaneStreams([22])
    assert np.array_equal(alone.random((1, 3))[0], first[1]) and np.array_equal(alone.random((1, 4)), rows)
    # the numbers are splitmix64's outputs from the lane's seed, top 53 bits as a fraction
    state, expected = 21, []
    for _ in range(3):
        state, out = splitmix64(state)
        expected.append((out >> 11) / 2**53)
    assert first[0].tolist() == expected
    draws = LaneStreams(range(4000)).integers(3, 6, 4000)
    assert set(draws.tolist()) == {3, 4, 5} and abs(draws.mean() - 4) < 0.05


def test_generated_sudoku_ranks_draw_only_their_examples(monkeypatch):
    import deqloop.tasks.sudoku as sudoku

    drawn = []
    real = sudoku.draw_examples
    monkeypatch.setattr(sudoku, "draw_examples", lambda example_seeds, *a: drawn.append(example_seeds) or
                        real(example_seeds, *a))
    Batches(get_task("sudoku", blanks=(4, 8)), 8, seed=1, rank=1, world=2)(3)
    assert drawn == [seeds.example_seeds(4, 8, 1, seeds.BATCH, 3)]


def test_chess_from_files_ranks_gather_their_shard_of_the_draw_make_makes(shared_data):
    task = get_task("chess", data=str(shared_data / "chess" / "lichess_puzzles_rating_1601_2000.csv"),
                    train_max_rating=2000)
    x, y = Batches(task, B, seed=2)(5)
    assert torch.equal(x, task.make("train", B, seed=seeds.derive_seed(2, seeds.BATCH, 5) % 2**31)[0])
    shards = [Batches(task, B, seed=2, rank=r, world=4)(5) for r in range(4)]
    assert torch.equal(torch.cat([s for s, _ in shards]), x) and torch.equal(torch.cat([t for _, t in shards]), y)
