"""Every post-training command (chapters 11-15c) under `torchrun --nproc_per_node 2` (DDP, gloo on CPU): it trains,
both ranks consume their own shard of the data (the checkpoint's position counts both), and only rank 0 writes the
model. The single-process runs and their resume are tested in each stage's own test file."""
import json

import pytest
import torch

from helpers import run, save_fresh_tiny, torchrun_launcher


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A fresh tiny model with the shipped tokenizer (also the distillation teacher), and 200 records of each corpus file."
    from minimind.corpus import default_corpus
    root = tmp_path_factory.mktemp('ddp')
    save_fresh_tiny(root / 'init')
    corpus, out = default_corpus(), dict(init=root / 'init', root=root)
    for kind in ('sft', 'identity', 'dpo', 'reason', 'rl'):
        out[kind] = root / f'{kind}.jsonl'
        with open(corpus[kind]) as f: out[kind].write_text(''.join(line for _, line in zip(range(200), f)))
    return out


STEPS, BATCH = 2, 2
COMMON = ['--steps', STEPS, '--batch_size', BATCH, '--log_every', '1', '--save_every', STEPS]
SEQ = ['--max_seq_len', '128', '--eval_every', STEPS]
STAGES = {  # stage: (console script, its flags beyond --init/--out, the file the model is saved in)
    'sft': ('minimind.sft:minimind_sft', lambda f: ['--data', f['sft'], *SEQ, '--lr', '3e-3'], 'model.safetensors'),
    'lora': ('minimind.lora:minimind_lora', lambda f: ['--data', f['identity'], *SEQ, '--rank', '4'], 'adapter_model.safetensors'),
    'dpo': ('minimind.dpo:minimind_dpo', lambda f: ['--data', f['dpo'], *SEQ, '--lr', '1e-4'], 'model.safetensors'),
    'distill': ('minimind.distill:minimind_distill', lambda f: ['--data', f['sft'], *SEQ, '--teacher', f['init']], 'model.safetensors'),
    'reason': ('minimind.reason:minimind_reason', lambda f: ['--data', f['reason'], *SEQ], 'model.safetensors'),
    # a fresh model earns no reward, so every advantage is 0 and so is the gradient: weight decay shows the step was taken
    'grpo': ('minimind.grpo:minimind_grpo', lambda f: ['--data', f['rl'], '--num_generations', '2', '--max_new_tokens', '8',
                                                        '--lr', '1e-3', '--weight_decay', '0.1'], 'model.safetensors'),
    # chapter 15c: several updates per batch, the critic trained beside the policy; the repetition reward varies on a fresh model
    'ppo': ('minimind.ppo:minimind_ppo', lambda f: ['--data', f['rl'], '--num_generations', '2', '--max_new_tokens', '8',
                                                     '--lr', '1e-3', '--updates', '2', '--reward', 'repetition'], 'model.safetensors'),
    'cispo': ('minimind.ppo:minimind_cispo', lambda f: ['--data', f['rl'], '--num_generations', '2', '--max_new_tokens', '8',
                                                         '--lr', '1e-3', '--updates', '2', '--reward', 'repetition'], 'model.safetensors'),
}


@pytest.mark.parametrize('stage', list(STAGES))
def test_two_processes(stage, files, tmp_path):
    script, flags, saved = STAGES[stage]
    out = tmp_path / stage
    r = run(script, '--init', files['init'], '--out', out, *COMMON, *flags(files), launcher=torchrun_launcher(2),
            cache=files['root'] / 'cache')
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert f'done: step {STEPS}/{STEPS}' in r.stdout, r.stdout[-2000:]
    assert r.stdout.count('done: step') == 1                         # only rank 0 reports...
    state = json.loads((out / f'step-{STEPS:07d}' / 'trainer_state.json').read_text())
    assert state['world_size'] == 2 and state['stage'] == stage
    assert state['position'] == STEPS * BATCH * 2                     # ... but both ranks trained on their own batches
    from safetensors.torch import load_file
    trained = load_file(str(out / saved))
    if stage == 'lora': assert any(v.abs().sum() > 0 for k, v in trained.items() if 'lora_B' in k)  # B left zero: it learned
    else:
        start = load_file(str(files['init'] / 'model.safetensors'))
        assert any(not torch.equal(trained[k], start[k]) for k in start)
