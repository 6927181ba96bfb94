"""Tests of `minimind.model` that don't belong in a notebook: parity with the reference fixtures, `torch.compile`
with `fullgraph=True`, checkpoint files, and an MoE model under 2-process DDP with idle experts."""
import os, tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minimind.config import MiniMindConfig, fixtures_dir, enable_yarn, DEFAULT_YARN
from minimind.model import MiniMindForCausalLM, check_state_dict, load_state_dict_file

torch.set_num_threads(2)
REFERENCE_MODELS = [f'{gen}/{name}' for gen in ('minimind2', 'minimind3') for name in ('dense_tiny', 'moe_tiny', 'yarn_tiny')]
DATA = Path(__file__).parent / 'data'


def reference_folder(generation:str='minimind2') -> Path:
    "The fixtures folder of one generation (minimind2, minimind3); skip when absent (an error when $MINIMIND_REQUIRE_FIXTURES is set)."
    found = fixtures_dir()  # raises FileNotFoundError when required and missing
    if found is None: pytest.skip('reference fixtures not found (set $MINIMIND_FIXTURES, or $MINIMIND_REQUIRE_FIXTURES to fail)')
    return found / generation


def reference_file(name:str, kind:str) -> Path:
    "`generation/model` and `config`, `weights` or `expected` -> its fixture file."
    generation, model = name.split('/')
    return reference_folder(generation) / (f'{model}.{kind}.' + ('json' if kind == 'config' else 'safetensors'))


def load_reference(name):
    "Our model with the reference weights `name` (`generation/model`), its config, and the reference outputs."
    config = MiniMindConfig.load(reference_file(name, 'config'))
    model = MiniMindForCausalLM.from_pretrained(reference_file(name, 'weights'), config=config)
    return model, config, load_file(str(reference_file(name, 'expected')))


def tiny_config(**overrides) -> MiniMindConfig:
    "A model small enough to compile in well under a minute."
    return MiniMindConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=256), **overrides})


# ---------------------------------------------------------------- parity with the reference implementation

@pytest.mark.parametrize('name', REFERENCE_MODELS)
def test_logits_match_reference(name):
    model, _, expected = load_reference(name)
    ids = expected['input_ids']
    with torch.no_grad():
        logits = model.eval()(ids).logits
        assert logits.dtype == torch.float32
        diff = (logits - expected['logits']).abs().max().item()
        assert diff <= 1e-4, f'{name}: max |logits - reference| = {diff:.2e}'
        # the same logits through the KV cache: a prefix at once, then one token at a time
        out = model(ids[:, :10], use_cache=True)
        pieces = [out.logits]
        for t in range(10, ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            pieces.append(out.logits)
        diff = (torch.cat(pieces, 1) - expected['logits']).abs().max().item()
        assert diff <= 1e-4, f'{name} with the cache: max |logits - reference| = {diff:.2e}'


@pytest.mark.parametrize('name', REFERENCE_MODELS)
def test_aux_loss_matches_reference(name):
    model, _, expected = load_reference(name)
    with torch.no_grad(): aux = model.train()(expected['input_ids']).aux_loss
    assert aux.dim() == 0
    assert abs(aux.item() - expected['aux_loss'].item()) <= 1e-6, (aux.item(), expected['aux_loss'].item())
    with torch.no_grad(): assert model.eval()(expected['input_ids']).aux_loss.item() == 0.0


@pytest.mark.parametrize('name', REFERENCE_MODELS)
def test_greedy_matches_reference(name):
    model, _, expected = load_reference(name)
    model.eval()
    want = expected['greedy_ids']
    prompt, n_new = want[:, :8], want.shape[1] - 8
    assert torch.equal(model.generate(prompt, max_new_tokens=n_new, temperature=0), want)  # KV cache
    ids = prompt
    with torch.no_grad():                                                                   # no cache
        for _ in range(n_new): ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(ids, want)
    streamed = torch.stack(list(model.stream_generate(prompt, max_new_tokens=n_new, temperature=0)), 1)
    assert torch.equal(streamed, want[:, 8:])


@pytest.mark.parametrize('name', REFERENCE_MODELS)
def test_reference_round_trip_keeps_layout(name):
    "save_pretrained writes exactly the reference's key names and shapes (no lm_head), and reloads to equal logits."
    model, config, expected = load_reference(name)
    reference_keys = load_file(str(reference_file(name, 'weights')))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        saved = load_file(str(Path(tmp) / 'model.safetensors'))
        assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in reference_keys.items()}
        assert MiniMindConfig.load(tmp) == config
        again = MiniMindForCausalLM.from_pretrained(tmp).eval()
    with torch.no_grad():
        assert torch.equal(again(expected['input_ids']).logits, model.eval()(expected['input_ids']).logits)


def _yarn_logits_diff(config_dict:dict) -> float:
    "Max |logits - reference| of yarn_tiny's weights under the config `config_dict` describes."
    folder = reference_folder()
    config = MiniMindConfig.from_dict(config_dict)
    model = MiniMindForCausalLM.from_pretrained(folder / 'yarn_tiny.weights.safetensors', config=config).eval()
    expected = load_file(str(folder / 'yarn_tiny.expected.safetensors'))
    with torch.no_grad(): return (model(expected['input_ids']).logits - expected['logits']).abs().max().item()


def test_yarn_matches_reference_in_every_config_form():
    "The reference's YaRN from the flag alone, from transformers 5.0's and 5.24's rope_parameters, and from enable_yarn."
    import json
    d = json.loads((reference_folder() / 'yarn_tiny.config.json').read_text())
    flag_only = {k: v for k, v in d.items() if k != 'rope_scaling'}            # MiniMind2 derives rope_scaling from the flag
    tf5_0 = {**flag_only, 'rope_parameters': d['rope_scaling']}
    tf5_24 = {**flag_only, 'rope_parameters': {**d['rope_scaling'], 'rope_type': 'yarn', 'rope_theta': d['rope_theta']}}
    theta_inside = {k: v for k, v in tf5_24.items() if k != 'rope_theta'}
    for name, form in [('as published', d), ('flag only', flag_only), ('transformers 5.0', tf5_0),
                       ('transformers 5.24', tf5_24), ('rope_theta inside', theta_inside)]:
        diff = _yarn_logits_diff(form)
        assert diff <= 1e-4, f'{name}: max |logits - reference| = {diff:.2e}'
    plain = {k: v for k, v in flag_only.items() if k != 'inference_rope_scaling'}
    switched = enable_yarn(MiniMindConfig.from_dict(plain))                       # what --inference_rope_scaling does
    assert switched == MiniMindConfig.from_dict(d)
    assert _yarn_logits_diff(plain) > 1e-2                                       # without YaRN the logits are not the reference's
    paper = {**d, 'rope_scaling': {**d['rope_scaling'], 'attention_factor': None}}   # the paper's temperature, on request
    assert _yarn_logits_diff(paper) > 1e-2


@pytest.mark.parametrize('version', ['4.57', '5.0', '5.24'])
def test_transformers_written_configs_load(version):
    "config.json exactly as the reference's class writes it under each transformers version (YaRN on) reads the same."
    config = MiniMindConfig.load(DATA / f'minimind2_yarn_config.transformers-{version}.json')
    assert config == MiniMindConfig.from_preset('minimind2-small', inference_rope_scaling=True)
    assert config.rope_scaling == DEFAULT_YARN


@pytest.mark.parametrize('version', ['4.57', '5.24'])
def test_full_transformers_configs_load(version):
    "Written with use_diff=False: every base-class and generation key, and convert_model.py's max_seq_len, are bookkeeping."
    config = MiniMindConfig.load(DATA / f'minimind2_config.transformers-{version}-full.json')
    assert config == MiniMindConfig.from_preset('minimind2-small')


def test_unknown_architecture_key_is_named(tmp_path):
    import json
    d = json.loads((DATA / 'minimind2_yarn_config.transformers-5.24.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps({**d, 'sliding_window': 4096}))
    with pytest.raises(ValueError, match=r"unknown config keys \['sliding_window'\]"): MiniMindConfig.load(tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps({**d, 'rope_parameters': {**d['rope_parameters'], 'mscale': 0.7}}))
    with pytest.raises(ValueError, match=r"unknown keys \['mscale'\]"): MiniMindConfig.load(tmp_path)


# ---------------------------------------------------------------- torch.compile

def _compile_and_compare(config):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = MiniMindForCausalLM(config).train()
    ids = torch.randint(0, config.vocab_size, (2, 24))
    compiled = torch.compile(eager, fullgraph=True)   # any graph break is an error
    out = compiled(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    compiled_grads = {n: p.grad.clone() for n, p in eager.named_parameters()}
    eager.zero_grad(set_to_none=True)
    ref = eager(ids, labels=ids)
    (ref.loss + ref.aux_loss).backward()
    assert abs(out.loss.item() - ref.loss.item()) < 1e-5
    assert abs(out.aux_loss.item() - ref.aux_loss.item()) < 1e-6
    for n, p in eager.named_parameters():
        torch.testing.assert_close(compiled_grads[n], p.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f'{n}: {m}')
    torch._dynamo.reset()


def test_dense_training_forward_compiles_fullgraph():
    _compile_and_compare(tiny_config())


def test_moe_training_forward_compiles_fullgraph():
    "The MoE training dispatch has data-dependent token counts: captured as one graph with this dynamo flag."
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        _compile_and_compare(tiny_config(use_moe=True))


# ---------------------------------------------------------------- checkpoint files

@pytest.fixture(scope='module')
def small_model():
    torch.manual_seed(0)
    return MiniMindForCausalLM(tiny_config()).eval()


def _logits(model, ids):
    with torch.no_grad(): return model(ids).logits


def test_save_and_load_round_trip(small_model, tmp_path):
    ids = torch.randint(0, 6400, (2, 9))
    small_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json', 'model.safetensors']  # no temp files left
    assert 'lm_head.weight' not in load_file(str(tmp_path / 'model.safetensors'))
    small_model.save_pretrained(tmp_path)                                                      # overwriting works
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded, ids), _logits(small_model, ids))
    half = MiniMindForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_legacy_pth_files_load(small_model, tmp_path):
    ids = torch.randint(0, 6400, (2, 9))
    state = small_model.state_dict()                      # holds lm_head.weight too (the same tensor)
    variants = {
        'plain.pth': {k: v.half() for k, v in state.items()},                 # MiniMind saves float16
        'ddp.pth': {'module.' + k: v for k, v in state.items()},
        'compiled.pth': {'_orig_mod.' + k: v for k, v in state.items()},
        'resume.pth': {'model': dict(state), 'step': torch.tensor(3)},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        loaded = MiniMindForCausalLM.from_pretrained(tmp_path / name, config=small_model.config)
        torch.testing.assert_close(_logits(loaded, ids), _logits(small_model, ids), rtol=0, atol=2e-2 if 'plain' in name else 0)
    assert set(load_state_dict_file(tmp_path / 'ddp.pth')) == set(state)


def test_pickled_code_is_refused(tmp_path):
    "weights_only=True: a .pth holding arbitrary objects is not unpickled."
    torch.save({'model.norm.weight': torch.ones(2), 'evil': Path('/')}, tmp_path / 'evil.pth')
    with pytest.raises(Exception): load_state_dict_file(tmp_path / 'evil.pth')


def test_strict_loading_lists_every_problem(small_model, tmp_path):
    state = {k: v.clone() for k, v in small_model.state_dict().items() if k != 'lm_head.weight'}
    del state['model.layers.1.self_attn.k_proj.weight']
    del state['model.layers.0.mlp.up_proj.weight']
    state['model.layers.0.self_attn.q_proj.bias'] = torch.zeros(64)
    state['model.norm.weight'] = torch.ones(65)
    with pytest.raises(ValueError) as err: check_state_dict(small_model, state)
    message = str(err.value)
    for needle in ['missing 2', 'model.layers.1.self_attn.k_proj.weight', 'model.layers.0.mlp.up_proj.weight',
                   'unexpected 1', 'q_proj.bias', 'misshaped 1', 'model.norm.weight: file (65,), model (64,)']:
        assert needle in message, (needle, message)
    # a file whose config does not match the model fails when loading, naming the shapes
    small_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match='misshaped'):
        MiniMindForCausalLM.from_pretrained(tmp_path, config=tiny_config(intermediate_size=128))
    with pytest.raises(ValueError, match='pass its config'):
        MiniMindForCausalLM.from_pretrained(tmp_path / 'model.safetensors')
    with pytest.raises(FileNotFoundError):
        MiniMindForCausalLM.from_pretrained(tmp_path / 'nowhere')


def test_untied_head_in_file_is_refused(small_model):
    state = dict(small_model.state_dict())
    state['lm_head.weight'] = torch.randn_like(state['lm_head.weight'])
    with pytest.raises(ValueError, match='tie_word_embeddings'): check_state_dict(small_model, state)


# ---------------------------------------------------------------- MoE and DDP: experts with no tokens

def test_idle_experts_still_get_gradients():
    "One token picks 2 of 4 experts per layer; training mode must still give every parameter a gradient."
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(use_moe=True)).train()
    out = model(torch.tensor([[5]]))
    (out.logits.float().pow(2).mean() + out.aux_loss).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad


def _ddp_worker(rank, world_size, init_file, config, results):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(MiniMindForCausalLM(config).train())  # find_unused_parameters=False
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):  # DDP notices unused parameters at the step after they went missing
            out = model(torch.tensor([[5 + rank + step]]))  # one token picks 2 of 4 experts: 2 per layer are idle
            (out.logits.pow(2).mean() + out.aux_loss).backward()
            opt.step(); opt.zero_grad()
        results[rank] = 'ok'
    finally:
        dist.destroy_process_group()


def test_moe_under_ddp_with_idle_experts(tmp_path):
    import torch.multiprocessing as mp
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'rendezvous'), tiny_config(use_moe=True), results), nprocs=2, join=True)
    assert dict(results) == {0: 'ok', 1: 'ok'}
