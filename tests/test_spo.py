"""SPO (chapter 15d): the per-prompt value tracker, the direction of one step, `minimind_spo` end to end with exact
resume (the prompt values included), bad flags, and two processes sharing one tracker."""
import json

import pytest
import torch

from helpers import run, torchrun_launcher
from minimind.trainer import read_metrics

SPO = 'minimind.spo:minimind_spo'


def test_step_raises_a_reply_that_beat_its_prompts_value():
    "Prompt 0 is believed hard (value 0.1) and its reply succeeded; prompt 1 believed easy (0.9) and its reply failed: one step raises the first reply, lowers the second."
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.grpo import grpo_loss, token_logprobs
    from minimind.spo import spo_advantages
    torch.set_num_threads(1); torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=64, num_hidden_layers=2))
    seqs = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 11, 20, 21, 22]])
    logp_of = lambda: token_logprobs(model, seqs, torch.ones_like(seqs), 3)
    adv = spo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.1, 0.9]))
    assert adv[0] > 0 > adv[1]
    before = logp_of().sum(dim=1).detach()
    logp = logp_of()
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(2, 3), beta=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02); loss.backward(); opt.step()
    after = logp_of().sum(dim=1).detach()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_help_and_bad_flags(tmp_path):
    r = run(SPO, '--help')
    assert r.returncode == 0 and all(f in r.stdout for f in ('--d-half', '--rho-min', '--rho-max', '--num-generations')), r.stdout
    for flags, says in ((['--rho_min', '0'], '--rho-min'), (['--rho_min', '0.9', '--rho_max', '0.5'], '--rho-max'),
                        (['--d_half', '0'], '--d-half')):
        r = run(SPO, '--out', tmp_path / 'out', *flags)
        assert r.returncode == 2 and says in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists()


def test_spo_end_to_end_and_exact_resume(tmp_path, reasoning_files):
    from safetensors.torch import load_file
    common = ['--init', reasoning_files['init'], '--data', reasoning_files['rl'], '--batch_size', '4', '--max_new_tokens', '8',
              '--save_every', '2', '--log_every', '1', '--lr', '1e-3', '--warmup_steps', '1', '--min_lr', '1e-3',
              '--reward', 'repetition,format']
    r = run(SPO, *common, '--out', tmp_path / 'straight', '--steps', '3')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 3/3' in r.stdout and 'values of 16 prompts' in r.stdout, r.stdout[-1500:]
    recs = read_metrics(tmp_path / 'straight')
    assert [m['step'] for m in recs] == [1, 2, 3] and {'baseline', 'rho', 'learning', 'kl'} <= set(recs[0])
    assert run(SPO, *common, '--out', tmp_path / 'resumed', '--steps', '2').returncode == 0
    r = run(SPO, *common, '--out', tmp_path / 'resumed', '--steps', '3', '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ('model.safetensors', 'prompt_values.safetensors'):
        a, b = (load_file(str(tmp_path / d / name)) for d in ('straight', 'resumed'))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    values = load_file(str(tmp_path / 'straight' / 'prompt_values.safetensors'))
    assert values['prompt_values.visits'].sum() == 12                        # 3 steps x 4 prompts


def test_two_processes_share_one_tracker(tmp_path, reasoning_files):
    "2 ranks x 2 prompts x 2 steps: rank 0's saved tracker holds all 8 visits (the other rank's too)."
    from safetensors.torch import load_file
    out = tmp_path / 'ddp'
    r = run(SPO, '--init', reasoning_files['init'], '--data', reasoning_files['rl'], '--out', out, '--steps', '2', '--batch_size', '2',
            '--max_new_tokens', '8', '--reward', 'repetition', launcher=torchrun_launcher(2))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    values = load_file(str(out / 'prompt_values.safetensors'))
    assert values['prompt_values.visits'].sum() == 8
