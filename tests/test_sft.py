"""`minimind_sft` end to end (chapter 11): a tiny run from a saved model, exact resume, --help, a missing --init,
a bad data line, and a MiniMind-format file with long conversations (--max_seq_len 512)."""
import json, shutil
from pathlib import Path

import pytest

from helpers import run, save_fresh_tiny
from minimind.trainer import read_metrics

REPO = Path(__file__).resolve().parents[1]
SFT = 'minimind.sft:minimind_sft'
TINY = ['--batch_size', '4', '--max_seq_len', '128', '--eval_every', '4', '--log_every', '1', '--lr', '3e-3']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "The first 200 conversations of the embedded SFT corpus."
    from minimind.corpus import default_corpus
    path = tmp_path_factory.mktemp('data') / 'sft_small.jsonl'
    with open(default_corpus()['sft']) as f: path.write_text(''.join(next(f) for _ in range(200)))
    return path


@pytest.fixture(scope='module')
def init(tmp_path_factory):
    "A fresh tiny model saved to disk (SFT only needs a folder with config.json and weights)."
    return save_fresh_tiny(tmp_path_factory.mktemp('init'), with_tokenizer=False)


def weights(folder):
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / 'model.safetensors'))


def test_help_lists_every_flag():
    r = run(SFT, '--help')
    assert r.returncode == 0
    for flag in ('--init', '--data', '--out', '--steps', '--epochs', '--batch-size', '--accum', '--lr', '--max-seq-len',
                 '--dtype', '--compile', '--resume', '--deepspeed', '--tokenizer', '--skip-bad-lines'):
        assert flag in r.stdout, flag


def test_tiny_run_and_exact_resume(tmp_path, data, init):
    "8 steps straight; then the same run resumed from its step-4 checkpoint ends with the same weights, bit for bit."
    straight = tmp_path / 'straight'
    r = run(SFT, '--init', init, '--data', data, '--out', straight, '--steps', '8', '--save_every', '4', *TINY, cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 8/8' in r.stdout
    recs = read_metrics(straight)
    assert [m['step'] for m in recs if 'loss' in m] == list(range(1, 9))
    assert any('val_loss' in m for m in recs)
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    model = MiniMindForCausalLM.from_pretrained(straight)
    assert load_tokenizer(straight).vocab_size == model.config.vocab_size  # the tokenizer is saved beside it
    assert any((weights(straight)[k] != weights(init)[k]).any() for k in weights(init))  # it trained
    # a run that stopped after its step-4 checkpoint: the same folder without step 8
    resumed = tmp_path / 'resumed'
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / 'step-0000008'); (resumed / 'latest').write_text('step-0000004\n')
    r = run(SFT, '--init', init, '--data', data, '--out', resumed, '--steps', '8', '--save_every', '4', *TINY, '--resume',
            cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 8/8' in r.stdout
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_missing_init_is_a_clear_error(tmp_path, data):
    r = run(SFT, '--init', tmp_path / 'no_model', '--data', data, '--out', tmp_path / 'out', '--steps', '2')
    assert r.returncode != 0
    assert 'no_model' in r.stderr and 'minimind_pretrain' in r.stderr and 'Traceback' not in r.stderr


def test_bad_line_reported_with_its_line_number(tmp_path, data, init):
    bad = tmp_path / 'bad.jsonl'
    lines = data.read_text().splitlines(keepends=True)[:20]
    lines[4] = '{"conversations": [{"role": "user", "content": "hi"}]}\n'  # line 5 has no assistant reply
    bad.write_text(''.join(lines))
    r = run(SFT, '--init', init, '--data', bad, '--out', tmp_path / 'out', '--steps', '2', *TINY, cache=tmp_path / 'cache')
    assert r.returncode != 0
    assert f'{bad}:5' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr


def test_an_empty_file_says_it_has_no_records(tmp_path, init):
    (tmp_path / 'empty.jsonl').write_text('\n')
    r = run(SFT, '--init', init, '--data', tmp_path / 'empty.jsonl', '--out', tmp_path / 'out', '--steps', '2', *TINY,
            cache=tmp_path / 'cache')
    assert r.returncode != 0 and 'empty.jsonl: no conversation in the file' in r.stderr, r.stderr[-2000:]
    assert '--max_seq_len' not in r.stderr and 'Traceback' not in r.stderr


def test_minimind_format_with_long_conversations(tmp_path, init):
    "MiniMind's sft_mini_512 rows: long Chinese prompts push the reply past 256 tokens; --max_seq_len 512 keeps them."
    rows = []
    for i in range(12):
        question = f'请阅读下面的材料并回答问题。材料{i}：' + '小城的清晨很安静，街道两旁的树木在风中轻轻摇动，人们慢慢地走向市场。' * 6 + '问题：人们走向哪里？'
        rows.append({'conversations': [{'role': 'user', 'content': question},
                                       {'role': 'assistant', 'content': '人们走向市场。' * (1 + i % 3)}]})
    path = tmp_path / 'sft_mini_512.jsonl'
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
    from minimind.tokenizer import load_tokenizer
    tok = load_tokenizer()
    lengths = [len(tok.apply_chat_template(r['conversations'], tokenize=True)) for r in rows]
    assert all(256 < n <= 512 for n in lengths), lengths  # the point of the test: longer than the default window
    args = ['--init', init, '--data', path, '--steps', '2', '--batch_size', '4', '--val_fraction', '0.1', '--log_every', '1']
    r = run(SFT, *args, '--out', tmp_path / 'out512', '--max_seq_len', '512', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'on 10 conversations (max 512 tokens, 0 without a reply in the window dropped)' in r.stdout, r.stdout
    assert 'done: step 2/2' in r.stdout
    # with the default 256 every reply lies beyond the window: nothing left to train on, and the error says so
    r = run(SFT, *args, '--out', tmp_path / 'out256', cache=tmp_path / 'cache')
    assert r.returncode != 0 and 'Traceback' not in r.stderr
