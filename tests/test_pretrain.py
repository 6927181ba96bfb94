"""`minimind_pretrain` end to end (chapter 10): a tiny run, resume, --help, a bad data line, torchrun and the
deepspeed launcher on 2 CPU processes, TensorBoard and wandb logging."""
import json
from pathlib import Path

import pytest

from helpers import BIN, run, free_port, torchrun_launcher
from minimind.trainer import read_metrics

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = 'minimind.pretrain:minimind_pretrain'
TINY = ['--steps', '4', '--batch_size', '4', '--max_seq_len', '64', '--save_every', '2', '--eval_every', '2',
        '--log_every', '1', '--lr', '3e-3']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "The first 400 documents of the embedded pretraining corpus."
    from minimind.corpus import default_corpus
    path = tmp_path_factory.mktemp('data') / 'pretrain_small.jsonl'
    with open(default_corpus()['pretrain']) as f: lines = [next(f) for _ in range(400)]
    path.write_text(''.join(lines))
    return path


def test_help_lists_every_flag():
    r = run(PRETRAIN, '--help')
    assert r.returncode == 0
    for flag in ('--preset', '--data', '--out', '--steps', '--epochs', '--batch-size', '--accum', '--lr', '--max-seq-len',
                 '--dtype', '--compile', '--resume', '--deepspeed', '--wandb', '--tensorboard', '--tokenizer'):
        assert flag in r.stdout, flag  # MiniMind's spelling (--batch_size) is accepted too: the other tests use it


def test_tiny_run_writes_a_loadable_model_and_resumes(tmp_path, data):
    out = tmp_path / 'out'
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY, cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 4/4' in r.stdout
    recs = read_metrics(out)
    assert [m['step'] for m in recs if 'loss' in m] == [1, 2, 3, 4]
    assert any('val_loss' in m for m in recs)
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    model = MiniMindForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 128                      # the tiny preset
    assert load_tokenizer(out).vocab_size == model.config.vocab_size  # the tokenizer is saved beside it
    assert (out / 'latest').read_text().strip() == 'step-0000004'
    # continue the same run to 8 steps
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY[2:], '--steps', '8', '--resume', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in read_metrics(out) if 'loss' in m] == list(range(1, 9))


def test_a_minimind3_preset_trains_with_minimind3s_tokenizer(tmp_path, data):
    "A tiny3 model gets the shipped minimind-3 tokenizer (36 added tokens, <tool_call> one id, its template), saved beside it; --tokenizer still wins."
    from minimind.config import MiniMindConfig
    from minimind.tokenizer import MINIMIND3_CHAT_TEMPLATE, load_tokenizer, shipped_tokenizer_dir
    out = tmp_path / 'out3'
    r = run(PRETRAIN, '--data', data, '--out', out, '--preset', 'tiny3', *TINY[:6], cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    tok = load_tokenizer(out)
    assert MiniMindConfig.load(out).family == 'minimind3' and tok.chat_template == MINIMIND3_CHAT_TEMPLATE
    assert tok.encode('<tool_call>') == [load_tokenizer(layout='minimind3').token_to_id('<tool_call>')]
    assert (out / 'tokenizer.json').read_bytes() == (shipped_tokenizer_dir('minimind3') / 'tokenizer.json').read_bytes()
    out2 = tmp_path / 'out2'   # the MiniMind2-layout tokenizer when asked for
    r = run(PRETRAIN, '--data', data, '--out', out2, '--preset', 'tiny3', '--tokenizer', shipped_tokenizer_dir(), *TINY[:6], cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_tokenizer(out2).chat_template != MINIMIND3_CHAT_TEMPLATE and len(load_tokenizer(out2).encode('<tool_call>')) > 1


def test_bad_line_reported_with_its_line_number(tmp_path, data):
    bad = tmp_path / 'bad.jsonl'
    lines = data.read_text().splitlines(keepends=True)[:20]
    lines[6] = '{"text": "an unfinished line\n'  # line 7 is not JSON
    bad.write_text(''.join(lines))
    r = run(PRETRAIN, '--data', bad, '--out', tmp_path / 'out', *TINY, cache=tmp_path / 'cache')
    assert r.returncode != 0
    assert f'{bad}:7' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr  # a message, not a stack trace
    r = run(PRETRAIN, '--data', bad, '--out', tmp_path / 'out2', *TINY, '--skip_bad_lines', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'skipped 1 bad line(s) of' in r.stdout and 'invalid json' in r.stdout, r.stdout[-2000:]  # said at the end, by reason
    counts = [m for m in read_metrics(tmp_path / 'out2') if 'skipped_lines' in m]
    assert len(counts) == 1 and sum(counts[0]['skipped_lines'].values()) == 1 and counts[0]['step'] == 4


def test_missing_data_file(tmp_path):
    r = run(PRETRAIN, '--data', tmp_path / 'nope.jsonl', '--out', tmp_path / 'out', *TINY)
    assert r.returncode != 0 and 'nope.jsonl' in r.stderr and 'Traceback' not in r.stderr


def test_torchrun_two_processes(tmp_path, data):
    out = tmp_path / 'out'
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY, launcher=torchrun_launcher(2), cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / 'step-0000004' / 'trainer_state.json').read_text())
    assert state['world_size'] == 2 and state['position'] == 4 * 4 * 2


def test_deepspeed_launcher(tmp_path, data):
    pytest.importorskip('deepspeed')
    out = tmp_path / 'out'
    launcher = [BIN / 'deepspeed', '--num_gpus', '2', '--master_port', str(free_port())]
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY, '--deepspeed', '2', launcher=launcher, cache=tmp_path / 'cache', timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    state = json.loads((out / 'step-0000004' / 'trainer_state.json').read_text())
    assert state['world_size'] == 2 and (out / 'step-0000004' / 'deepspeed').is_dir()
    assert (out / 'model.safetensors').exists()


def test_tensorboard_and_wandb_logging(tmp_path, data, monkeypatch):
    "--tensorboard writes event files with the same losses as metrics.jsonl; --wandb logs an offline run (no network)."
    pytest.importorskip('tensorboard')
    pytest.importorskip('wandb')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    out = tmp_path / 'logged'
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY, '--tensorboard', '--wandb', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    events = EventAccumulator(str(out / 'tb')).Reload()
    assert 'loss' in events.Tags()['scalars'], events.Tags()
    tb_loss = {e.step: e.value for e in events.Scalars('loss')}
    jsonl_loss = {m['step']: m['loss'] for m in read_metrics(out) if 'loss' in m}
    assert sorted(tb_loss) == sorted(jsonl_loss) == [1, 2, 3, 4]
    assert all(abs(tb_loss[s] - jsonl_loss[s]) < 1e-5 for s in tb_loss)
    runs = list((out / 'wandb').glob('offline-run-*/run-*.wandb'))
    assert len(runs) == 1 and runs[0].stat().st_size > 0, list((out / 'wandb').rglob('*'))


def test_a_run_killed_mid_save_is_cleaned_up_on_resume(tmp_path, data):
    "What a kill during a save leaves (temporary files and folders at the top of --out) is removed; the run resumes."
    out = tmp_path / 'run'
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY, cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    litter = [out / 'model.safetensors.tmp', out / 'latest.tmp4242', out / 'config.json.tmp']
    for f in litter: f.write_text('half a file')
    (out / 'step-0000006.tmp' / 'rng').mkdir(parents=True)
    r = run(PRETRAIN, '--data', data, '--out', out, *TINY[2:], '--steps', '6', '--resume', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(f.exists() for f in litter) and not (out / 'step-0000006.tmp').exists()
    assert (out / 'model.safetensors').is_file() and (out / 'latest').read_text().strip() == 'step-0000006'


def test_an_unusable_out_is_one_line_before_any_work(tmp_path, data):
    (tmp_path / 'a_file').write_text('x')
    for out in (tmp_path / 'a_file', tmp_path / 'a_file' / 'run'):
        r = run(PRETRAIN, '--data', data, '--out', out, *TINY, cache=tmp_path / 'cache')
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and '--out' in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / 'cache').exists()                     # nothing was tokenized
