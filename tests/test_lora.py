"""`minimind_lora` end to end (chapter 12): a tiny run that saves only the adapter, resume, --help, --merge_out,
clear errors; LoRA on an MoE model; and the same outputs as the `peft` library's LoRA on the same weights."""
from pathlib import Path

import pytest
import torch
from helpers import run
from minimind.trainer import read_metrics

REPO = Path(__file__).resolve().parents[1]
LORA = 'minimind.lora:minimind_lora'
TINY = ['--steps', '4', '--batch_size', '4', '--max_seq_len', '96', '--save_every', '2', '--eval_every', '2',
        '--log_every', '1', '--lr', '5e-3']


def tiny_config(**overrides):
    from minimind.config import MiniMindConfig
    return MiniMindConfig.from_preset('tiny', **{'num_hidden_layers': 2, **overrides})


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A random 2-layer tiny model with its tokenizer, standing in for the SFT model."
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    folder = tmp_path_factory.mktemp('base')
    torch.manual_seed(0)
    MiniMindForCausalLM(tiny_config()).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "The first 120 conversations of the embedded identity set."
    from minimind.corpus import default_corpus
    path = tmp_path_factory.mktemp('data') / 'lora_identity_small.jsonl'
    with open(default_corpus()['identity']) as f: path.write_text(''.join(next(f) for _ in range(120)))
    return path


def test_help_lists_every_flag():
    r = run(LORA, '--help')
    assert r.returncode == 0
    for flag in ('--init', '--data', '--out', '--rank', '--alpha', '--dropout', '--targets', '--merge-out', '--steps',
                 '--epochs', '--batch-size', '--accum', '--lr', '--max-seq-len', '--dtype', '--resume', '--deepspeed',
                 '--tokenizer'):
        assert flag in r.stdout, flag


def test_tiny_run_saves_only_the_adapter_resumes_and_merges(tmp_path, base, data):
    from minimind.model import MiniMindForCausalLM
    from minimind.lora import load_adapter, read_adapter_config, lora_modules
    out, merged = tmp_path / 'out', tmp_path / 'merged'
    r = run(LORA, '--init', base, '--data', data, '--out', out, '--rank', '4', '--alpha', '8', '--targets', 'q,v,down', *TINY,
            cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 4/4' in r.stdout
    assert [m['step'] for m in read_metrics(out) if 'loss' in m] == [1, 2, 3, 4]
    ckpt = out / 'step-0000004'
    assert sorted(f.name for f in ckpt.glob('*.safetensors')) == ['adapter_model.safetensors']  # no base weights
    assert not (out / 'model.safetensors').exists()
    # 2 layers x (q: 4*(128+128), v: 4*(128+64), down: 4*(384+128)) float32 numbers, plus a small header
    n_adapter = 2 * 4 * ((128 + 128) + (128 + 64) + (384 + 128))
    assert (out / 'adapter_model.safetensors').stat().st_size < 4 * n_adapter + 4096
    assert read_adapter_config(out)['targets'] == ['q', 'v', 'down'] and read_adapter_config(out)['rank'] == 4
    assert (out / 'tokenizer.json').exists()
    # the adapter loads onto the base and changes its outputs
    ids = torch.randint(0, 6400, (1, 12))
    plain = MiniMindForCausalLM.from_pretrained(base).eval()
    adapted = load_adapter(MiniMindForCausalLM.from_pretrained(base), out).eval()
    assert len(lora_modules(adapted)) == 2 * 3
    with torch.no_grad(): assert not torch.allclose(plain(ids).logits, adapted(ids).logits)
    # continue the same run to 6 steps, and write the merged model at the end
    r = run(LORA, '--init', base, '--data', data, '--out', out, '--rank', '4', '--alpha', '8', '--targets', 'q,v,down',
             *TINY[2:], '--steps', '6', '--resume', '--merge_out', merged, cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in read_metrics(out) if 'loss' in m] == list(range(1, 7))
    assert (out / 'latest').read_text().strip() == 'step-0000006'
    adapted = load_adapter(MiniMindForCausalLM.from_pretrained(base), out).eval()
    with torch.no_grad():
        diff = (MiniMindForCausalLM.from_pretrained(merged)(ids).logits - adapted(ids).logits).abs().max().item()
    assert diff <= 1e-5
    # resuming with another rank is refused with a message, not a traceback
    r = run(LORA, '--init', base, '--data', data, '--out', out, '--rank', '8', *TINY[2:], '--steps', '8', '--resume',
            cache=tmp_path / 'cache')
    assert r.returncode != 0 and 'rank-4 adapter' in r.stderr and 'Traceback' not in r.stderr


def test_missing_init_is_a_clear_error(tmp_path):
    from fastcore.script import CliError
    from minimind.lora import lora_cli
    with pytest.raises(CliError, match='nope: no such folder; train one with .minimind_sft'):
        lora_cli(init=str(tmp_path / 'nope'), out=str(tmp_path / 'out'))


def test_moe_experts_adapt_and_merge():
    "gate/up/down targets reach every expert (routed and shared) of an MoE model; merging keeps the outputs."
    from minimind.model import MiniMindForCausalLM
    from minimind.lora import apply_lora, lora_modules, merge_lora
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(use_moe=True)).eval()
    apply_lora(model, rank=2, alpha=4, targets='gate,up,down')
    cfg = model.config
    assert len(lora_modules(model)) == cfg.num_hidden_layers * 3 * (cfg.n_routed_experts + cfg.n_shared_experts)
    with torch.no_grad():
        for m in lora_modules(model).values(): m.lora_B.normal_(0, 0.05)
        ids = torch.randint(0, 6400, (2, 10))
        adapted = model(ids).logits
        assert (merge_lora(model)(ids).logits - adapted).abs().max().item() <= 1e-5


@pytest.mark.parametrize('targets', ['q,k,v,o', 'all'])
def test_same_outputs_as_peft(targets):
    "peft's LoRA, injected into the same base with the same A and B (B nonzero), gives our outputs."
    peft = pytest.importorskip('peft')
    from minimind.model import MiniMindForCausalLM
    from minimind.lora import apply_lora, lora_modules, resolve_targets, LORA_TARGETS
    torch.manual_seed(0)
    ours = MiniMindForCausalLM(tiny_config()).eval()
    theirs = MiniMindForCausalLM(tiny_config()).eval()
    theirs.load_state_dict(ours.state_dict())
    rank, alpha = 4, 12
    apply_lora(ours, rank=rank, alpha=alpha, targets=targets)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                             target_modules=[LORA_TARGETS[t] for t in resolve_targets(targets)])
    theirs = peft.inject_adapter_in_model(config, theirs)
    with torch.no_grad():
        for name, m in lora_modules(ours).items():
            m.lora_B.normal_(0, 0.05)                     # a trained-looking adapter: B nonzero
            other = theirs.get_submodule(name)
            other.lora_A['default'].weight.copy_(m.lora_A)  # (r, d_in)
            other.lora_B['default'].weight.copy_(m.lora_B)  # (d_out, r)
            assert other.scaling['default'] == m.scaling
        ids = torch.randint(0, 6400, (2, 16))
        ours_logits, theirs_logits = ours(ids).logits, theirs(ids).logits
    assert (ours_logits - theirs_logits).abs().max().item() <= 1e-5
    n_peft = sum(p.numel() for n, p in theirs.named_parameters() if 'lora_' in n)
    assert n_peft == sum(p.numel() for p in ours.parameters() if p.requires_grad)


def test_init_from_a_minimind2_pth(tmp_path, data):
    "--init full_sft_64.pth: MiniMind2's own fp16 state dict (module. prefix, config.json and tokenizer beside it) is the base."
    from helpers import minimind2_pth
    from minimind.lora import load_adapter, read_adapter_config
    from minimind.stage import load_checkpoint_folder
    pth = minimind2_pth(tmp_path / 'minimind2')
    out = tmp_path / 'out'
    r = run(LORA, '--init', pth, '--data', data, '--out', out, '--rank', '4', '--alpha', '8', '--targets', 'q,o', *TINY,
            cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_adapter_config(out)['base_model'] == str(pth.resolve())
    base, tok = load_checkpoint_folder(pth)
    adapted, _ = load_checkpoint_folder(pth, lora=out)
    ids = torch.tensor([tok.encode('我是MiniMind')])
    with torch.no_grad(): assert not torch.allclose(base(ids).logits, adapted(ids).logits)
    r = run(LORA, '--init', tmp_path / 'minimind2' / 'nope.pth', '--data', data, '--out', tmp_path / 'x', *TINY)
    assert r.returncode != 0 and 'nope.pth: no such file;' in r.stderr and 'Traceback' not in r.stderr


def test_minimind2_adapter_layout(tmp_path):
    "lora_*.pth as MiniMind2's model_lora.py writes it: rank from the shapes, scale 1 (alpha = rank), targets from the names; merge_lora gives W + B A."
    from helpers import minimind2_lora, merge_by_hand
    from minimind.model import MiniMindForCausalLM
    from minimind.lora import load_adapter, read_reference_adapter, merge_lora, lora_modules
    torch.manual_seed(0); model = MiniMindForCausalLM(tiny_config()).eval()
    adapter = minimind2_lora(tmp_path / 'lora_identity_128.pth', model, rank=6)
    torch.save({f'module.{k}': v for k, v in adapter.items()}, tmp_path / 'ddp.pth')   # saved from a DDP-wrapped model
    settings, _ = read_reference_adapter(tmp_path / 'ddp.pth')
    assert settings == dict(rank=6, alpha=6.0, dropout=0.0, targets=['q', 'o'])
    ids = torch.randint(0, 6400, (1, 16))
    torch.manual_seed(0); by_hand = merge_by_hand(MiniMindForCausalLM(tiny_config()).eval(), adapter)
    torch.manual_seed(0); ours = load_adapter(MiniMindForCausalLM(tiny_config()).eval(), tmp_path / 'ddp.pth')
    assert len(lora_modules(ours)) == 2 * 2
    with torch.no_grad():
        want = by_hand(ids).logits
        assert (ours(ids).logits - want).abs().max().item() < 1e-5
        assert (merge_lora(ours)(ids).logits - want).abs().max().item() < 1e-5
    broken = dict(adapter); broken.pop('model.layers.0.self_attn.q_proj.lora.B.weight')
    torch.save(broken, tmp_path / 'broken.pth')
    with pytest.raises(ValueError, match='q_proj has lora.A but not both'): read_reference_adapter(tmp_path / 'broken.pth')
    torch.save({'x.lora.A.weight': torch.zeros(2, 4), 'x.lora.B.weight': torch.zeros(4, 2), 'evil': Path('/')}, tmp_path / 'evil.pth')
    with pytest.raises(ValueError, match='not a plain state dict'): read_reference_adapter(tmp_path / 'evil.pth')
    wider = MiniMindForCausalLM(tiny_config(hidden_size=256))
    with pytest.raises(ValueError, match='misshaped'): load_adapter(wider, tmp_path / 'lora_identity_128.pth')
