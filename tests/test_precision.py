"""Mixed precision on the CPU (chapter 09's `--dtype`): pretraining and SFT under bfloat16 autocast and under float16
with the gradient scaler. The forward pass really runs in the low precision, the loss falls, nothing is NaN, the saved
weights are the float32 masters, and under float16 the scaler's state is in the checkpoint (and comes back on resume).
The float32 default, which the course's committed results depend on, is not touched by any of this."""
import math
from pathlib import Path

import pytest
import torch

from helpers import run, save_fresh_tiny
from minimind.trainer import read_metrics

PRETRAIN, SFT = 'minimind.pretrain:minimind_pretrain', 'minimind.sft:minimind_sft'
LOOP = ['--steps', '16', '--batch_size', '4', '--save_every', '8', '--log_every', '1', '--lr', '3e-3', '--warmup_steps', '2']
LOW = ['bfloat16', 'float16']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "400 pretraining documents and 200 conversations of the embedded corpus."
    from minimind.corpus import default_corpus
    folder = tmp_path_factory.mktemp('data')
    for kind, n in (('pretrain', 400), ('sft', 200)):
        with open(default_corpus()[kind]) as f: (folder / f'{kind}.jsonl').write_text(''.join(next(f) for _ in range(n)))
    return folder


@pytest.fixture(scope='module')
def init(tmp_path_factory): return save_fresh_tiny(tmp_path_factory.mktemp('init'), with_tokenizer=False)


def check_run(out:Path, dtype:str):
    "The loss fell and stayed finite, the weights on disk are float32, and optimizer.pt holds a scaler exactly under float16."
    from safetensors import safe_open
    losses = [m['loss'] for m in read_metrics(out) if 'loss' in m]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses), losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, (dtype, losses)
    for folder in (out, out / 'step-0000016'):
        with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {'F32'}, (folder, dtypes)                  # the float32 masters, not the autocast copies
    state = torch.load(out / 'step-0000016' / 'optimizer.pt', weights_only=True)
    if dtype == 'float16':
        scaler = state['scaler']
        assert scaler is not None and 0 < scaler['scale'] < math.inf and scaler['_growth_tracker'] >= 0, scaler
    else:
        assert state['scaler'] is None                               # bfloat16 has float32's range: no loss scaling
    exp_avg = next(iter(state['optimizer']['state'].values()))['exp_avg']
    assert exp_avg.dtype == torch.float32                            # AdamW's moments stay float32 too


@pytest.mark.parametrize('dtype', LOW)
def test_pretrain_under_autocast(tmp_path, data, dtype):
    out = tmp_path / 'out'
    r = run(PRETRAIN, '--data', data / 'pretrain.jsonl', '--out', out, '--max_seq_len', '64', '--dtype', dtype, *LOOP,
            cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 16/16' in r.stdout
    check_run(out, dtype)


@pytest.mark.parametrize('dtype', LOW)
def test_sft_under_autocast(tmp_path, data, init, dtype):
    out = tmp_path / 'out'
    r = run(SFT, '--init', init, '--data', data / 'sft.jsonl', '--out', out, '--max_seq_len', '128', '--dtype', dtype, *LOOP,
            cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    check_run(out, dtype)


def test_float16_resume_restores_the_scaler(tmp_path, data):
    "A float16 run resumed from its step-8 checkpoint starts from the saved scale, not the scaler's default 65536."
    from minimind.trainer import TrainConfig
    from minimind.pretrain import pretrain
    out = tmp_path / 'out'
    common = dict(out_dir=str(out), batch_size=4, lr=3e-3, warmup_steps=2, max_seq_len=64, save_every=8, log_every=1,
                  dtype='float16', progress=False)
    pretrain(TrainConfig(steps=8, **common), data=data / 'pretrain.jsonl', preset='tiny', cache_dir=tmp_path / 'cache')
    saved = torch.load(out / 'step-0000008' / 'optimizer.pt', weights_only=True)['scaler']
    saved['scale'] = 1024.0                                          # a scale the default (65536) cannot be mistaken for
    part = torch.load(out / 'step-0000008' / 'optimizer.pt', weights_only=True); part['scaler'] = saved
    torch.save(part, out / 'step-0000008' / 'optimizer.pt')
    trainer = pretrain(TrainConfig(steps=9, resume=True, **common), data=data / 'pretrain.jsonl', preset='tiny',
                       cache_dir=tmp_path / 'cache')
    scale = trainer.backend.scaler.get_scale()
    assert scale in (1024.0, 2048.0, 512.0), scale                   # one step on from 1024 (grown, kept or halved)


def test_autocast_is_on_in_the_forward_pass(tmp_path):
    "The Trainer's forward pass produces logits in the asked dtype (float32 by default on the CPU), and the parameters stay float32."
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.trainer import Trainer, TrainConfig
    torch.manual_seed(0)
    rows = torch.randint(0, 256, (8, 16))
    ds = [dict(input_ids=r, labels=r) for r in rows]
    for dtype, expected in (('auto', torch.float32), ('bfloat16', torch.bfloat16), ('float16', torch.float16)):
        model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=256))
        seen = []
        def loss_fn(m, batch):
            out = m(**batch); seen.append(out.logits.dtype)
            return out.loss, dict(ce=out.loss.detach())
        cfg = TrainConfig(out_dir=str(tmp_path / dtype), steps=2, batch_size=4, dtype=dtype, progress=False, save_every=2)
        Trainer(model, ds, cfg, loss_fn=loss_fn).fit()
        assert seen and set(seen) == {expected}, (dtype, seen)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
