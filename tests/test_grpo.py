"""`minimind_grpo` end to end (chapter 15a): tiny runs from a fresh tiny model, resume (sampling included), --help,
a MiniMind-format r1 file as prompts, the course's one-digit prompts."""
import json

import torch

from helpers import run
from minimind.trainer import read_metrics

GRPO = 'minimind.grpo:minimind_grpo'


def test_help_lists_the_flags():
    r = run(GRPO, '--help')
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--init', '--data', '--out', '--steps', '--num-generations', '--max-new-tokens', '--beta', '--clip-eps',
                 '--temperature', '--resume'):
        assert flag in r.stdout, flag


def test_grpo_end_to_end_and_resume(tmp_path, reasoning_files):
    out = tmp_path / 'grpo'
    common = ['--init', reasoning_files['init'], '--data', reasoning_files['rl'], '--out', out, '--batch_size', '2', '--num_generations', '3',
              '--max_new_tokens', '8', '--save_every', '2', '--log_every', '1']
    r = run(GRPO, *common, '--steps', '2')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 2/2' in r.stdout and 'mean reward' in r.stdout
    recs = read_metrics(out)
    assert [m['step'] for m in recs] == [1, 2]
    assert {'reward', 'format_reward', 'answer_reward', 'kl', 'reply_len'} <= set(recs[0])
    assert 0 < recs[0]['reply_len'] <= 8
    assert recs[0]['tokens'] > 0 and recs[0]['tokens_per_s'] > 0  # prompts and replies: the loss function counts them
    r = run(GRPO, *common, '--steps', '3', '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in read_metrics(out)] == [1, 2, 3]
    state = json.loads((out / 'step-0000003' / 'trainer_state.json').read_text())
    assert state['stage'] == 'grpo' and state['position'] == 6  # 3 steps of 2 prompts


def test_grpo_resume_is_exact_on_a_minimind_r1_file(tmp_path, reasoning_files):
    "Prompts from an r1 file (answer read from <answer>); 3 steps straight = 2 steps + resume, sampling RNG included."
    from safetensors.torch import load_file
    from minimind.grpo import grpo
    from minimind.trainer import TrainConfig
    torch.set_num_threads(1)
    def train(out, steps, resume=False):
        cfg = TrainConfig(out_dir=str(out), steps=steps, batch_size=2, lr=1e-3, save_every=2, log_every=1,
                          resume=resume, progress=False, warmup_steps=1, min_lr=1e-3)  # a flat schedule: 2 + 1 == 3
        return grpo(cfg, reasoning_files['init'], reasoning_files['r1'], num_generations=3, max_new_tokens=8)
    train(tmp_path / 'straight', 3)
    train(tmp_path / 'resumed', 2)
    train(tmp_path / 'resumed', 3, resume=True)
    a, b = load_file(str(tmp_path / 'straight' / 'model.safetensors')), load_file(str(tmp_path / 'resumed' / 'model.safetensors'))
    init = load_file(str(reasoning_files['init'] / 'model.safetensors'))
    assert any(not torch.equal(a[k], init[k]) for k in a)  # it trained
    for k in a: assert torch.equal(a[k], b[k]), k
    assert [m['reward'] for m in read_metrics(tmp_path / 'straight')] == [m['reward'] for m in read_metrics(tmp_path / 'resumed')]


def test_grpo_on_the_one_digit_prompts(tmp_path, reasoning_files):
    "`--data one-digit`: the course's prompts (the practised half of the one-digit problems), built in code, no file."
    out = tmp_path / 'grpo'
    r = run(GRPO, '--init', reasoning_files['init'], '--data', 'one-digit', '--out', out, '--steps', '1', '--batch_size', '2',
                   '--num_generations', '2', '--max_new_tokens', '4')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'on 708 prompts' in r.stdout, r.stdout  # 118 problems x 2 languages x 3 wordings
    assert [m['step'] for m in read_metrics(out)] == [1]


def test_grpo_keeps_the_moe_balancing_loss(tmp_path, reasoning_files):
    "An MoE policy trained by GRPO gets the load-balancing loss like every stage (the Trainer adds it): it is logged and in the loss."
    from helpers import save_fresh_tiny
    init = save_fresh_tiny(tmp_path / 'moe', preset='tiny-moe')
    out = tmp_path / 'grpo'
    r = run(GRPO, '--init', init, '--data', reasoning_files['rl'], '--out', out, '--steps', '2', '--batch_size', '2',
            '--num_generations', '2', '--max_new_tokens', '4', '--log_every', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [m for m in read_metrics(out) if 'loss' in m]
    assert len(steps) == 2 and all(m['aux'] > 0 for m in steps), steps
