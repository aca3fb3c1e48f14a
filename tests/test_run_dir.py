"""A run's one logging path and its progress bars, with the real logging and tqdm."""

from __future__ import annotations

import io
import logging
import sys
import types

import pytest

from synthstats.progress import interactive, progress_bar
from synthstats.train.run_dir import remove_unstarted, setup_logging


@pytest.fixture
def clean_logging():
    root = logging.getLogger()
    saved = list(root.handlers)
    yield root
    root.handlers[:] = saved
    for handler in list(logging.getLogger("synthstats").handlers):
        logging.getLogger("synthstats").removeHandler(handler)


@pytest.mark.parametrize("root_prints", [False, True])
def test_a_message_is_printed_once_even_when_the_root_logger_prints(
    root_prints, clean_logging, tmp_path, monkeypatch
):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    if root_prints:  # a notebook's logging.basicConfig()
        clean_logging.addHandler(logging.StreamHandler(sys.stderr))
    setup_logging(tmp_path)
    logging.getLogger("synthstats.train").info("step 7 loss=1")
    assert stderr.getvalue().count("step 7 loss=1") == 1
    assert (tmp_path / "train.log").read_text().count("step 7 loss=1") == 1


def test_a_notebook_kernel_counts_as_interactive(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a kernel's stderr is no terminal
    assert not interactive()
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert interactive()
    with progress_bar(3, "steps") as bar:
        assert not bar.disable


def test_log_lines_go_around_a_live_bar(clean_logging, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    setup_logging(tmp_path)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    with progress_bar(2, "steps", unit="step") as bar:
        # While the bar lives, the package's console handler writes through tqdm.
        handlers = logging.getLogger("synthstats").handlers
        assert any(type(handler).__name__ == "_TqdmLoggingHandler" for handler in handlers)
        bar.update(1)
    assert not any(
        type(handler).__name__ == "_TqdmLoggingHandler"
        for handler in logging.getLogger("synthstats").handlers
    )


def test_progress_bar_is_off_when_asked(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    with progress_bar(3, "steps", show=False) as bar:
        assert bar.disable


def test_only_a_run_directory_without_steps_is_removed(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.log").write_text("started\n")
    remove_unstarted(empty)
    assert not empty.exists()
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text('{"step": 0}\n')
    remove_unstarted(started)
    assert (started / "metrics.jsonl").exists()


def test_gather_keeps_input_order(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from synthstats.progress import gather

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(pow, 2, n) for n in range(5)]
        assert gather(futures, "scoring", unit="file") == [1, 2, 4, 8, 16]
