"Shared pytest setup: with MINIMIND_REQUIRE_FIXTURES set (CI sets it), missing reference fixtures fail the run instead of skipping parity tests."
import os
from pathlib import Path

import pytest
from minimind.config import fixtures_dir

def pytest_sessionstart(session):
    if os.environ.get('MINIMIND_REQUIRE_FIXTURES') and fixtures_dir(required=False) is None:
        raise pytest.UsageError("MINIMIND_REQUIRE_FIXTURES is set but the reference fixtures were not found "
                                "(expected ../shared/fixtures beside the repository, or set MINIMIND_FIXTURES)")


DATA = Path(__file__).resolve().parent / 'data'


@pytest.fixture(scope='module')
def reasoning_files(tmp_path_factory):
    """A fresh tiny model (with the shipped tokenizer saved beside it), a MiniMind-format r1 file (tests/data's
    r1_mix_1024.jsonl: SFT conversations whose last reply carries <think>/<answer>, some multi-turn, with a system
    prompt, in Chinese; repeated to 16 conversations, enough for a train and a validation split) and 16 RL prompts."""
    from helpers import save_fresh_tiny
    from minimind.corpus import default_corpus
    root = tmp_path_factory.mktemp('reason')
    save_fresh_tiny(root / 'init')
    r1 = root / 'r1_mix_1024.jsonl'
    r1.write_text((DATA / 'r1_mix_1024.jsonl').read_text(encoding='utf-8') * 4, encoding='utf-8')
    rl = root / 'rl.jsonl'
    with open(default_corpus()['rl']) as f: rl.write_text(''.join(next(f) for _ in range(16)))
    return dict(init=root / 'init', r1=r1, rl=rl)
