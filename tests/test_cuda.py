"""The CUDA paths (run by tools/gpu_check.sh on a GPU machine; skipped where torch sees no CUDA device).

bf16 autocast and fp16 with the grad scaler through the real pretraining stage (the loss falls, the saved weights are
float32 masters, the scaler's state is in the checkpoint), the fused AdamW kernel against the unfused one, torch.compile
against eager (the logits, then a compiled training run), a one-process NCCL group with DDP, and the KV cache on the GPU."""
import math
from pathlib import Path

import pytest
import torch

from helpers import free_port

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (tools/gpu_check.sh runs these)')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from minimind.corpus import default_corpus
    path = tmp_path_factory.mktemp('data') / 'pretrain.jsonl'
    with open(default_corpus()['pretrain']) as f: path.write_text(''.join(next(f) for _ in range(800)))
    return path


def tiny(vocab:int=6400, seed:int=0, preset:str='tiny'):
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig.from_preset(preset, vocab_size=vocab))


def pretrain_on_cuda(tmp_path, data, dtype:str, compile:bool=False, steps:int=24):
    from minimind.pretrain import pretrain
    from minimind.trainer import TrainConfig, read_metrics
    out = tmp_path / f'{dtype}-{compile}'
    cfg = TrainConfig(out_dir=str(out), steps=steps, batch_size=16, lr=3e-3, warmup_steps=2, max_seq_len=128,
                      save_every=steps, log_every=1, dtype=dtype, compile=compile, progress=False)
    trainer = pretrain(cfg, data=data, preset='tiny', cache_dir=tmp_path / 'cache')
    assert trainer.device.type == 'cuda'
    losses = [m['loss'] for m in read_metrics(out) if 'loss' in m]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    return out, trainer


def masters_are_float32(folder:Path):
    from safetensors import safe_open
    with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {'F32'}


def test_bf16_autocast_pretrain(tmp_path, data):
    if not torch.cuda.is_bf16_supported(): pytest.skip('this GPU has no bfloat16')
    out, trainer = pretrain_on_cuda(tmp_path, data, 'bfloat16')
    assert trainer.dtype == torch.bfloat16
    masters_are_float32(out)
    assert torch.load(out / f'step-{24:07d}' / 'optimizer.pt', weights_only=True)['scaler'] is None


def test_auto_dtype_is_bf16_on_a_gpu_that_has_it(tmp_path):
    from minimind.trainer import resolve_dtype
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype('auto', torch.device('cuda')) == expected


def test_fp16_with_grad_scaler_pretrain(tmp_path, data):
    out, trainer = pretrain_on_cuda(tmp_path, data, 'float16')
    assert trainer.backend.scaler is not None and trainer.backend.scaler.is_enabled()
    masters_are_float32(out)
    scaler = torch.load(out / f'step-{24:07d}' / 'optimizer.pt', weights_only=True)['scaler']
    assert scaler is not None and 0 < scaler['scale'] < math.inf


def test_fused_adamw_matches_the_unfused_kernel():
    from minimind.trainer import TrainConfig, make_optimizer
    a, b = tiny().cuda(), tiny().cuda()
    cfg = TrainConfig(out_dir='unused', lr=1e-3, progress=False)
    fused = make_optimizer(a, cfg)
    assert fused.defaults.get('fused') is True                        # every parameter on the GPU: the fused kernel
    plain = torch.optim.AdamW([dict(params=g['params'], weight_decay=g['weight_decay']) for g in
                               [dict(params=[p for p in b.parameters() if p.ndim >= 2], weight_decay=cfg.weight_decay),
                                dict(params=[p for p in b.parameters() if p.ndim < 2], weight_decay=0.0)]],
                              lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, foreach=False)
    ids = torch.randint(0, 6400, (4, 64), device='cuda')
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad(); model(ids, labels=ids).loss.backward(); opt.step()
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff < 1e-5, diff
    assert any((p - q).abs().max() > 0 for p, q in zip(a.parameters(), tiny().cuda().parameters()))  # it moved


def test_compile_matches_eager_and_trains(tmp_path, data):
    model = tiny().cuda().eval()
    ids = torch.randint(0, 6400, (2, 96), device='cuda')
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model)(ids).logits
    assert (eager - compiled).abs().max().item() < 1e-3
    pretrain_on_cuda(tmp_path, data, 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16', compile=True, steps=12)


def test_one_process_nccl_group_and_ddp():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group('nccl', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)
    try:
        x = torch.arange(4.0, device='cuda')
        dist.all_reduce(x)
        assert x.tolist() == [0.0, 1.0, 2.0, 3.0]
        model = DDP(tiny().cuda(), device_ids=[0])
        ids = torch.randint(0, 6400, (2, 32), device='cuda')
        model(ids, labels=ids).loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


def test_kv_cache_decoding_on_the_gpu():
    "Greedy decoding with the KV cache gives the tokens that recomputing the whole sequence each step gives."
    model = tiny().cuda().eval()
    prompt = torch.randint(3, 6400, (2, 12), device='cuda')
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=16, temperature=0.0)[:, prompt.shape[1]:]
        seq = prompt
        for _ in range(16):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq[:, prompt.shape[1]:])
