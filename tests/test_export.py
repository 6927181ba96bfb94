"""`minimind.export` (chapter 17) against the real libraries: transformers loads the exports (Llama, GraniteMoeShared)
and computes MiniMind's logits, greedy continuations and chat text; MiniMind2's reference weights export too; the
import back is exact; gguf's reader reads the GGUF file back; `minimind_export` end to end."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip('transformers')
gguf = pytest.importorskip('gguf')
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import run
from minimind.config import MiniMindConfig, fixtures_dir
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import load_tokenizer, render_chat
from minimind.export import (to_hf, from_hf, to_gguf, read_gguf, gguf_forward, unpermute_from_gguf, permute_for_gguf,
                             hf_config, granite_exact)

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
EXPORT = 'minimind.export:minimind_export'
TEXT = ['Toma lives in Saltport. The river there is wide and slow, and', '盐港的河很宽。Mira has three cats and a dog']


def make_model(seed=0, **overrides) -> MiniMindForCausalLM:
    "A fresh tiny model (random weights, eval mode)."
    torch.manual_seed(seed)
    preset = 'tiny-moe' if overrides.pop('moe', False) else 'tiny'
    return MiniMindForCausalLM(MiniMindConfig.from_preset(preset, vocab_size=6400, **overrides)).eval()


def batch(tok, n=2, length=20) -> torch.Tensor:
    "(n, length) ids of two different texts."
    return torch.tensor([tok.encode(t)[:length] for t in TEXT[:n]])


def assert_same_function(ours: MiniMindForCausalLM, theirs, ids, new_tokens=10):
    "Logits to 1e-4 and greedy continuations (KV cache on both sides) equal."
    with torch.no_grad(): a, b = ours(ids).logits, theirs(ids).logits
    assert (a - b).abs().max().item() <= 1e-4, (a - b).abs().max().item()
    for row in ids:  # one row at a time: both stop at <|im_end|> without padding
        mine = ours.generate(row[None], max_new_tokens=new_tokens, temperature=0, eos_token_id=2)
        hf = theirs.generate(row[None], max_new_tokens=new_tokens, do_sample=False)
        assert mine.tolist() == hf.tolist()


@pytest.fixture(scope='module')
def tok():
    return load_tokenizer()


@pytest.fixture(scope='module')
def dense_export(tmp_path_factory):
    model = make_model(0)
    return model, to_hf(model, tmp_path_factory.mktemp('dense') / 'hf')


@pytest.fixture(scope='module')
def moe_export(tmp_path_factory):
    model = make_model(1, moe=True, n_shared_experts=2)  # two shared experts: exercises their concatenation
    return model, to_hf(model, tmp_path_factory.mktemp('moe') / 'hf')


def test_dense_loads_as_llama_with_equal_logits_and_greedy(dense_export, tok):
    model, folder = dense_export
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == 'LlamaForCausalLM'
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied, as in MiniMind
    assert_same_function(model, hf, batch(tok))


def test_tokenizer_and_chat_template(dense_export, tok):
    _, folder = dense_export
    hf_tok = AutoTokenizer.from_pretrained(folder)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, len(hf_tok)) == (1, 2, 0, tok.vocab_size)
    for text in TEXT + ['<|im_start|>user\n<think>x</think><answer>4</answer><|im_end|>']:
        assert hf_tok(text).input_ids == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    tools = [dict(type='function', function=dict(name='add', description='加法', parameters=dict(type='object')))]
    conversations = [
        [dict(role='user', content='What is 2 + 3?')],
        [dict(role='system', content='You are MiniMind.'), dict(role='user', content='你好'),
         dict(role='assistant', content='你好！'), dict(role='user', content='Where does Toma live?')],
        [dict(role='user', content='add 2 and 3'),
         dict(role='assistant', content='', tool_calls=[dict(function=dict(name='add', arguments={'a': 2, 'b': 3}))]),
         dict(role='tool', content='5'), dict(role='assistant', content='5')]]
    checked = 0
    for messages in conversations:
        for generation_prompt in (False, True):
            for thinking in (None, True, False):
                for with_tools in (None, tools):
                    extra = {} if thinking is None else dict(enable_thinking=thinking)
                    text = hf_tok.apply_chat_template(messages, tools=with_tools, tokenize=False,
                                                      add_generation_prompt=generation_prompt, **extra)
                    assert text == render_chat(messages, add_generation_prompt=generation_prompt, enable_thinking=thinking,
                                               tools=with_tools), (messages, generation_prompt, thinking)
                    checked += 1
    assert checked == 36
    assert hf_tok.apply_chat_template(conversations[0], tokenize=False, add_generation_prompt=True,
                                      enable_thinking=False).endswith('<|im_start|>assistant\n<think>\n\n</think>\n\n')


def test_moe_loads_as_granite_moe_shared_with_equal_logits_and_greedy(moe_export, tok):
    model, folder = moe_export
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == 'GraniteMoeSharedForCausalLM'
    assert hf.config.shared_intermediate_size == 2 * model.config.intermediate_size
    assert_same_function(model, hf, batch(tok))


def test_moe_routing_granite_cannot_express_is_refused(tmp_path):
    for overrides in (dict(norm_topk_prob=False), dict(num_experts_per_tok=1)):
        model = make_model(2, moe=True, **overrides)
        assert granite_exact(model.config) is not None
        with pytest.raises(ValueError, match='no transformers architecture'): to_hf(model, tmp_path / 'refused')


@pytest.mark.parametrize('scaling', [dict(type='yarn', factor=4.0, original_max_position_embeddings=256, beta_fast=32.0, beta_slow=1.0),
                                     dict(type='linear', factor=2.0, original_max_position_embeddings=256)])
def test_rope_scaling_maps_exactly(tmp_path, tok, scaling):
    "YaRN and linear scaling as transformers computes them give MiniMind's logits; the tables really differ from plain RoPE."
    model = make_model(3, rope_scaling=scaling)
    hf = AutoModelForCausalLM.from_pretrained(to_hf(model, tmp_path / 'hf')).eval()
    assert hf.config.rope_parameters['rope_type'] == scaling['type']
    ids = batch(tok, 1, 24)
    with torch.no_grad(): a, b = model(ids).logits, hf(ids).logits
    assert (a - b).abs().max().item() <= 1e-4
    plain = make_model(3)
    with torch.no_grad(): assert (plain(ids).logits - a).abs().max().item() > 1e-4  # the scaling was not a no-op
    back = from_hf(tmp_path / 'hf')
    assert back.config.rope_scaling['type'] == scaling['type'] and back.config.rope_scaling['factor'] == scaling['factor']
    with torch.no_grad(): assert (back(ids).logits - a).abs().max().item() <= 1e-6


def test_ntk_scaling_is_refused(tmp_path):
    model = make_model(4, rope_scaling=dict(type='ntk', factor=4.0, original_max_position_embeddings=256))
    with pytest.raises(ValueError, match='no exact transformers equivalent'): to_hf(model, tmp_path / 'hf')


def test_import_back_is_exact(dense_export, moe_export, tmp_path):
    for model, folder in (dense_export, moe_export):
        back = from_hf(folder)
        assert back.config == model.config
        mine, theirs = model.state_dict(), back.state_dict()
        assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
        # transformers' own save_pretrained (its names and layout) imports to the same weights as well
        AutoModelForCausalLM.from_pretrained(folder).save_pretrained(tmp_path / folder.parent.name)
        resaved = from_hf(tmp_path / folder.parent.name).state_dict()
        assert all(torch.equal(mine[k], resaved[k]) for k in mine)


def reference_model(generation:str, name:str) -> tuple:
    "The reference fixture `generation/name` as our model: `(model, config, expected outputs, fixture folder)`; skips without fixtures."
    fixtures = fixtures_dir()
    if fixtures is None: pytest.skip('reference fixtures not found')
    folder = fixtures / generation
    from safetensors.torch import load_file
    config = MiniMindConfig.load(folder / f'{name}.config.json')
    model = MiniMindForCausalLM.from_pretrained(folder / f'{name}.weights.safetensors', config=config).eval()
    return model, config, load_file(str(folder / f'{name}.expected.safetensors')), folder


def exported_reference(generation:str, name:str, arch:str, out):
    """The reference fixture `generation/name` as our model, exported to transformers at `out`: checks that transformers loads
    it as `arch` and reproduces the reference's logits and greedy tokens; returns (model, config, expected, folder)."""
    model, config, expected, folder = reference_model(generation, name)
    exported = to_hf(model, out, tokenizer=folder)
    hf = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert type(hf).__name__ == arch
    with torch.no_grad(): logits = hf(expected['input_ids']).logits
    assert (logits - expected['logits']).abs().max().item() <= 1e-4
    greedy = hf.generate(expected['greedy_ids'][:, :8], max_new_tokens=12, do_sample=False, eos_token_id=None, min_new_tokens=12)
    assert greedy.tolist() == expected['greedy_ids'].tolist()
    return model, config, expected, folder


def test_reference_minimind2_weights_export(tmp_path):
    "MiniMind2's own (reference) weights and tokenizer: the transformers export reproduces the reference outputs."
    for name, arch in (('dense_tiny', 'LlamaForCausalLM'), ('moe_tiny', 'GraniteMoeSharedForCausalLM')):
        exported_reference('minimind2', name, arch, tmp_path / name)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / 'dense_tiny')  # MiniMind2's published tokenizer and template
    messages = [dict(role='user', content='你好')]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == render_chat(messages, True)


@pytest.mark.parametrize('name, arch', [('dense_tiny', 'Qwen3ForCausalLM'), ('moe_tiny', 'Qwen3MoeForCausalLM'), ('yarn_tiny', 'Qwen3ForCausalLM')])
def test_reference_minimind3_weights_export(tmp_path, name, arch):
    "minimind-3's reference weights and tokenizer: transformers' Qwen3 / Qwen3-MoE and the GGUF file (qwen3 / qwen3moe) reproduce the reference's logits; greedy tokens and the template match."
    out = tmp_path / name
    model, config, expected, folder = exported_reference('minimind3', name, arch, out)
    back = from_hf(out)
    assert back.config == config and all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    from minimind.tokenizer import render_minimind3_chat
    hf_tok = AutoTokenizer.from_pretrained(out)
    messages = [dict(role='user', content='你好'), dict(role='assistant', content='<think>\n想\n</think>\n好'), dict(role='user', content='?')]
    for thinking in (False, True):
        assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, open_thinking=thinking) == \
            render_minimind3_chat(messages, True, open_thinking=thinking)
    meta, tensors = read_gguf(to_gguf(model, tmp_path / 'm3.gguf', folder))   # llama.cpp's qwen3 / qwen3moe
    assert meta['general.architecture'] == ('qwen3moe' if config.use_moe else 'qwen3')
    assert 'blk.0.attn_q_norm.weight' in tensors and ('blk.0.ffn_gate_exps.weight' in tensors) == config.use_moe
    for row in range(expected['input_ids'].shape[0]):
        got = gguf_forward(tensors, meta, expected['input_ids'][row].tolist())
        assert abs(got - expected['logits'][row].double().numpy()).max() <= 1e-4


def test_gguf_read_back(tmp_path, tok):
    model = make_model(5)
    path = to_gguf(model, tmp_path / 'm.gguf')
    meta, tensors = read_gguf(path)
    c = model.config
    expected_meta = {'general.architecture': 'llama', 'llama.context_length': c.max_position_embeddings,
                     'llama.embedding_length': c.hidden_size, 'llama.block_count': c.num_hidden_layers,
                     'llama.feed_forward_length': c.intermediate_size, 'llama.attention.head_count': c.num_attention_heads,
                     'llama.attention.head_count_kv': c.num_key_value_heads, 'llama.rope.dimension_count': c.head_dim,
                     'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'gpt-2', 'tokenizer.ggml.bos_token_id': 1,
                     'tokenizer.ggml.eos_token_id': 2, 'tokenizer.ggml.padding_token_id': 0,
                     'tokenizer.chat_template': tok.chat_template}
    for key, value in expected_meta.items(): assert meta[key] == value, key
    assert abs(meta['llama.rope.freq_base'] - c.rope_theta) < 1e-3
    assert abs(meta['llama.attention.layer_norm_rms_epsilon'] - c.rms_norm_eps) < 1e-9
    assert meta['tokenizer.ggml.tokens'] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert meta['tokenizer.ggml.token_type'][:8] == [3, 3, 3, 4, 4, 4, 4, 1]  # control, user-defined tags, normal
    spec = json.loads(tok.tokenizer.to_str())['model']['merges']
    assert meta['tokenizer.ggml.merges'] == [m if isinstance(m, str) else ' '.join(m) for m in spec]
    # tensors: names, shapes (PyTorch order), values (q/k after undoing the permutation)
    state = model.state_dict()
    gguf_names = {'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight'}
    for i in range(c.num_hidden_layers):
        for g, m in [('attn_norm', 'input_layernorm'), ('attn_q', 'self_attn.q_proj'), ('attn_k', 'self_attn.k_proj'),
                     ('attn_v', 'self_attn.v_proj'), ('attn_output', 'self_attn.o_proj'), ('ffn_norm', 'post_attention_layernorm'),
                     ('ffn_gate', 'mlp.gate_proj'), ('ffn_up', 'mlp.up_proj'), ('ffn_down', 'mlp.down_proj')]:
            gguf_names[f'blk.{i}.{g}.weight'] = f'model.layers.{i}.{m}.weight'
    assert set(tensors) == set(gguf_names)  # no output.weight: tied
    for g, m in gguf_names.items():
        value = torch.from_numpy(tensors[g].copy())
        if g.endswith('attn_q.weight'): value = unpermute_from_gguf(value, c.num_attention_heads)
        if g.endswith('attn_k.weight'): value = unpermute_from_gguf(value, c.num_key_value_heads)
        assert value.shape == state[m].shape and torch.equal(value, state[m]), g
    assert not torch.equal(torch.from_numpy(tensors['blk.0.attn_q.weight'].copy()), state['model.layers.0.self_attn.q_proj.weight'])
    # llama.cpp's conventions (adjacent-pair rope on the permuted rows) compute MiniMind's logits
    ids = batch(tok, 1, 24)[0].tolist()
    with torch.no_grad(): ours = model(torch.tensor([ids])).logits[0].double().numpy()
    assert abs(gguf_forward(tensors, meta, ids) - ours).max() <= 1e-4
    # float16: matrices half precision, norms float32, values within half-precision rounding
    meta16, tensors16 = read_gguf(to_gguf(model, tmp_path / 'm16.gguf', dtype='float16'))
    assert str(tensors16['blk.0.ffn_up.weight'].dtype) == 'float16' and str(tensors16['blk.0.ffn_norm.weight'].dtype) == 'float32'
    assert abs(gguf_forward(tensors16, meta16, ids) - ours).max() <= 5e-2


def test_gguf_refuses_what_it_does_not_cover(tmp_path):
    with pytest.raises(ValueError, match="MiniMind2's MoE models with --to hf"): to_gguf(make_model(6, moe=True), tmp_path / 'moe.gguf')
    ntk = make_model(6, rope_scaling=dict(type='ntk', factor=4.0, original_max_position_embeddings=256))
    with pytest.raises(ValueError, match='no llama.cpp equivalent'): to_gguf(ntk, tmp_path / 'ntk.gguf')
    betas = make_model(6, rope_scaling=dict(type='yarn', factor=4.0, original_max_position_embeddings=256, beta_fast=16))
    with pytest.raises(ValueError, match='run-time flags'): to_gguf(betas, tmp_path / 'betas.gguf')
    assert not list(tmp_path.iterdir())                                          # nothing written for a refusal


@pytest.mark.parametrize('scaling', [dict(type='yarn', factor=4.0, original_max_position_embeddings=256, beta_fast=32, beta_slow=1),
                                     dict(type='yarn', factor=4.0, original_max_position_embeddings=256, attention_factor=None),
                                     dict(type='linear', factor=2.0, original_max_position_embeddings=256)])
def test_gguf_rope_scaling_keys(tmp_path, tok, scaling):
    "YaRN (MiniMind2's attention factor 1.0, or the paper's) and linear go into llama.cpp's rope-scaling keys; llama.cpp's formulas over them give MiniMind's logits."
    model = make_model(9, rope_scaling=scaling)
    meta, tensors = read_gguf(to_gguf(model, tmp_path / 'm.gguf', tok))
    assert meta['llama.rope.scaling.type'] == scaling['type'] and meta['llama.rope.scaling.factor'] == scaling['factor']
    ids = batch(tok, 1, 24)[0].tolist()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].double().numpy()
        plain = make_model(9)(torch.tensor([ids])).logits[0].double().numpy()
    assert abs(gguf_forward(tensors, meta, ids) - ours).max() <= 1e-4
    assert abs(plain - ours).max() > 1e-4                                          # the scaling was not a no-op
    if scaling['type'] == 'yarn':
        import math
        want = 1.0 if 'attention_factor' not in scaling else 0.1 * math.log(4.0) + 1
        assert abs(meta['llama.rope.scaling.attn_factor'] * (1 + 0.1 * math.log(4.0)) - want) < 1e-6
        assert meta['llama.rope.scaling.original_context_length'] == 256


def test_reference_yarn_exports_exactly(tmp_path):
    "yarn_tiny (MiniMind2 with inference_rope_scaling): transformers and the GGUF formulas give the reference's logits."
    model, config, expected, folder = reference_model('minimind2', 'yarn_tiny')
    out = to_hf(model, tmp_path / 'hf', tokenizer=folder)
    saved = json.loads((out / 'config.json').read_text())
    assert saved['rope_parameters']['attention_factor'] == 1.0 and saved['rope_scaling']['rope_type'] == 'yarn'
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad(): logits = hf(expected['input_ids']).logits
    assert (logits - expected['logits']).abs().max().item() <= 1e-4
    greedy = hf.generate(expected['greedy_ids'][:, :8], max_new_tokens=12, do_sample=False, eos_token_id=None, min_new_tokens=12)
    assert greedy.tolist() == expected['greedy_ids'].tolist()
    meta, tensors = read_gguf(to_gguf(model, tmp_path / 'yarn.gguf', folder))
    for row in range(expected['input_ids'].shape[0]):
        got = gguf_forward(tensors, meta, expected['input_ids'][row].tolist())
        assert abs(got - expected['logits'][row].double().numpy()).max() <= 1e-4


def test_cli_exports_minimind2_pth_with_yarn(tmp_path):
    "minimind_export full_sft_64.pth --inference-rope-scaling, to hf and to gguf: both checks pass, the YaRN keys are there."
    from helpers import minimind2_pth
    from minimind.stage import load_checkpoint_folder
    pth = minimind2_pth(tmp_path / 'out')
    for to, out in (('hf', tmp_path / 'mm2-hf'), ('gguf', tmp_path / 'mm2.gguf')):
        r = run(EXPORT, pth, '--to', to, '--out', out, '--inference-rope-scaling')
        assert r.returncode == 0, r.stderr[-3000:]
        diff = float(r.stdout.split('check: max |logit difference| ')[1].split()[0])
        assert diff <= 1e-4, r.stdout
    yarn, tok = load_checkpoint_folder(pth, inference_rope_scaling=True)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / 'mm2-hf').eval()
    assert hf.config.rope_parameters['rope_type'] == 'yarn' and hf.config.rope_parameters['attention_factor'] == 1.0
    ids = torch.tensor([tok.encode('你好，世界。Toma lives in Saltport.')])
    with torch.no_grad(): assert (hf(ids).logits - yarn(ids).logits).abs().max().item() <= 1e-4
    assert read_gguf(tmp_path / 'mm2.gguf')[0]['llama.rope.scaling.type'] == 'yarn'
    r = run(EXPORT, pth, '--to', 'hf', '--out', tmp_path / 'plain-hf')            # without the flag: plain RoPE
    assert r.returncode == 0 and json.loads((tmp_path / 'plain-hf' / 'config.json').read_text())['rope_scaling'] is None


def test_cli_end_to_end(tmp_path, tok):
    r = run(EXPORT, '--help')
    assert r.returncode == 0
    for flag in ('ckpt_dir', '--to', '--out', '--tokenizer', '--dtype', '--no-check'): assert flag in r.stdout, flag
    ckpt = make_model(7).save_pretrained(tmp_path / 'ckpt'); tok.save_pretrained(ckpt)
    r = run(EXPORT, ckpt, '--to', 'hf', '--out', tmp_path / 'hf')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'LlamaForCausalLM' in r.stdout and 'check: max |logit difference|' in r.stdout
    r = run(EXPORT, tmp_path / 'hf', '--to', 'minimind', '--out', tmp_path / 'back')
    assert r.returncode == 0, r.stderr[-3000:]
    back, original = MiniMindForCausalLM.from_pretrained(tmp_path / 'back'), MiniMindForCausalLM.from_pretrained(ckpt)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in original.state_dict().items())
    assert load_tokenizer(tmp_path / 'back').vocab_size == tok.vocab_size
    moe = make_model(8, moe=True).save_pretrained(tmp_path / 'moe')
    r = run(EXPORT, moe, '--to', 'gguf', '--out', tmp_path / 'moe.gguf', '--no_check')
    assert r.returncode != 0 and "MiniMind2's MoE models with --to hf" in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    # the other user errors, in process (each subprocess costs seconds of imports): CliError becomes the message
    from fastcore.script import CliError
    from minimind.export import export_cli
    with pytest.raises(CliError, match='nowhere: no such folder'): export_cli(str(tmp_path / 'nowhere'), to='hf')
    with pytest.raises(CliError, match='choose hf, gguf or minimind'): export_cli(str(ckpt), to='onnx')
    with pytest.raises(CliError, match='use float32 or float16'): export_cli(str(ckpt), to='gguf', dtype='bfloat16')


def test_an_existing_export_is_kept_unless_forced(tmp_path, tok):
    "A second export to the same GGUF file or into a non-empty folder is refused (exit != 0, nothing changed); --force replaces it whole."
    ckpt = make_model(7).save_pretrained(tmp_path / 'ckpt'); tok.save_pretrained(ckpt)
    gguf_path, hf_dir = tmp_path / 'm.gguf', tmp_path / 'hf'
    assert run(EXPORT, ckpt, '--to', 'gguf', '--out', gguf_path, '--no_check').returncode == 0
    before = gguf_path.read_bytes()
    r = run(EXPORT, ckpt, '--to', 'gguf', '--out', gguf_path, '--no_check')
    assert r.returncode != 0 and 'already exists' in r.stderr and '--force' in r.stderr and 'Traceback' not in r.stderr
    assert gguf_path.read_bytes() == before
    hf_dir.mkdir(); (hf_dir / 'notes.txt').write_text('mine')
    r = run(EXPORT, ckpt, '--to', 'hf', '--out', hf_dir, '--no_check')
    assert r.returncode != 0 and 'already exists' in r.stderr
    assert sorted(p.name for p in hf_dir.iterdir()) == ['notes.txt']
    r = run(EXPORT, ckpt, '--to', 'hf', '--out', hf_dir, '--no_check', '--force')
    assert r.returncode == 0, r.stderr[-2000:]
    assert (hf_dir / 'model.safetensors').is_file() and not (hf_dir / 'notes.txt').exists()   # replaced as a whole
    assert [p.name for p in tmp_path.iterdir() if '.tmp' in p.name] == []                      # no temporary left beside it


def test_an_export_cut_short_leaves_no_partial_file(tmp_path, tok, monkeypatch):
    "A failure while writing (a full disk, a kill) leaves neither the target nor a temporary file behind."
    import minimind.export as export
    model = make_model(7)
    def full_disk(*args, **kwargs): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(export, 'save_hf_tokenizer', full_disk)          # fails after the weights were written
    with pytest.raises(OSError, match='No space left'): export.to_hf(model, tmp_path / 'hf', tok)
    assert list(tmp_path.iterdir()) == []


def test_import_works_without_the_optional_packages():
    "Blocking transformers and gguf: the module imports, writes a transformers folder, and asks for the extra where needed."
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['gguf'] = None\n"
            "import minimind.export as e\n"
            "try: e.to_gguf(None, 'x.gguf')\n"
            "except ImportError as err: print('ERR', err)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'ERR gguf is needed' in r.stdout and 'pip install -e ".[hf]"' in r.stdout


def llama_cpp_model(llama_cpp, path):
    "llama.cpp on the GGUF at `path` with a float32 KV cache (its default is float16) and plain attention: then only summation order differs."
    return llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0, flash_attn=False)


def llama_cpp_greedy(llm, prompt:list, n:int) -> list:
    "The first `n` tokens llama.cpp's own sampler continues `prompt` with, greedily."
    generated = []
    for token in llm.generate(prompt, top_k=1, temp=0.0):
        generated.append(token)
        if len(generated) == n: break
    return generated


LLAMA_CPP_MODELS = {'minimind2': ('tiny', 'minimind2'), 'minimind3': ('tiny3', 'minimind3'), 'minimind3-moe': ('tiny3-moe', 'minimind3')}


@pytest.mark.parametrize('which', list(LLAMA_CPP_MODELS))
def test_llama_cpp_runs_the_gguf(tmp_path, which):
    "Where llama-cpp-python is installed (not part of the hf extra): llama.cpp itself (llama, qwen3, qwen3moe) computes MiniMind's logits and tokens."
    llama_cpp = pytest.importorskip('llama_cpp')
    import numpy as np
    from minimind.tokenizer import shipped_tokenizer_dir
    preset, layout = LLAMA_CPP_MODELS[which]
    torch.manual_seed(9)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset(preset, vocab_size=6400)).eval()
    with torch.no_grad():   # QK-norm gains away from their initial 1, so a misplaced or missing one shows
        for name, p in model.named_parameters():
            if name.endswith(('q_norm.weight', 'k_norm.weight')): p.uniform_(0.5, 1.5)
    tok = load_tokenizer(layout=layout)
    path = to_gguf(model, tmp_path / 'm.gguf', shipped_tokenizer_dir(layout))
    llm = llama_cpp_model(llama_cpp, path)
    text = '<|im_start|>' + TEXT[0] + ' ' + TEXT[1] + ('<tool_call>{"name": "add"}</tool_call>' if layout == 'minimind3' else '')
    ids = llm.tokenize(text.encode('utf-8'), add_bos=False, special=True)
    assert ids == tok.encode(text)                  # llama.cpp's BPE with our vocab, merges and pre-tokenizer
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)], dtype=np.float64)     # (T, V)
    with torch.no_grad(): ours = model(torch.tensor([ids])).logits[0].double().numpy()
    assert abs(theirs - ours).max() <= 1e-4, abs(theirs - ours).max()
    llm.reset()
    prompt = tok.encode('<|im_start|>' + TEXT[0])
    mine = model.generate(torch.tensor([prompt]), max_new_tokens=8, temperature=0, eos_token_id=2)[0, len(prompt):].tolist()
    assert llama_cpp_greedy(llm, prompt, len(mine)) == mine


@pytest.mark.parametrize('name', ['dense_tiny', 'moe_tiny'])
def test_llama_cpp_runs_the_reference_minimind3_gguf(tmp_path, name):
    "Where llama-cpp-python is installed: minimind-3's reference weights as a qwen3 / qwen3moe GGUF, run by llama.cpp, give the reference's logits and greedy tokens."
    llama_cpp = pytest.importorskip('llama_cpp')
    import numpy as np
    model, config, expected, folder = reference_model('minimind3', name)
    llm = llama_cpp_model(llama_cpp, to_gguf(model, tmp_path / f'{name}.gguf', folder))
    for row in range(expected['input_ids'].shape[0]):
        ids = expected['input_ids'][row].tolist()
        llm.reset(); llm.eval(ids)
        theirs = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
        assert abs(theirs - expected['logits'][row].double().numpy()).max() <= 1e-4
    prompt, want = expected['greedy_ids'][0, :8].tolist(), expected['greedy_ids'][0, 8:].tolist()
    llm.reset()
    assert llama_cpp_greedy(llm, prompt, len(want)) == want
