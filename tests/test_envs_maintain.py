"""The maintainer tools rewrite exactly the shipped files (prompts, reference ELPD line)."""

import pytest

from synthstats import maintain
from synthstats.envs.catalog import demonstration_path, spec_path


@pytest.mark.parametrize("name", ["dugongs", "lotka_volterra"])
def test_refresh_prompts_reproduces_the_shipped_jsonl(name, tmp_path, monkeypatch):
    target = tmp_path / f"{name}.jsonl"
    monkeypatch.setattr(maintain, "demonstration_path", lambda _: target)
    maintain.refresh_prompts(name)
    assert target.read_text() == demonstration_path(name).read_text()


def test_store_reference_elpd_rewrites_only_that_line(tmp_path, monkeypatch):
    target = tmp_path / "dugongs.yaml"
    original = spec_path("dugongs").read_text()
    target.write_text(original)
    monkeypatch.setattr(maintain, "spec_path", lambda _: target)
    maintain.store_reference_elpd("dugongs", 12.3456)
    lines = zip(original.splitlines(), target.read_text().splitlines(), strict=True)
    changed = [(before, after) for before, after in lines if before != after]
    assert len(changed) <= 1
    assert "reference_elpd: 12.35" in target.read_text().splitlines()
