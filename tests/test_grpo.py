"""`minimind_grpo` end to end (chapter 15a): tiny runs from a fresh tiny model, resume (sampling included), --help,
a MiniMind-format r1 file as prompts, the course's one-digit prompts, MiniMind's RLAIF prompt files (no ground truth:
format, length and repetition rewards) and the --reward choice."""
import json
from pathlib import Path

import pytest
import torch

from helpers import run
from minimind.trainer import read_metrics

GRPO = 'minimind.grpo:minimind_grpo'
DATA = Path(__file__).resolve().parent / 'data'


def test_help_lists_the_flags():
    r = run(GRPO, '--help')
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--init', '--data', '--out', '--steps', '--num-generations', '--max-new-tokens', '--beta', '--clip-eps',
                 '--temperature', '--resume', '--reward'):
        assert flag in r.stdout, flag


def test_grpo_end_to_end_and_resume(tmp_path, reasoning_files):
    out = tmp_path / 'grpo'
    common = ['--init', reasoning_files['init'], '--data', reasoning_files['rl'], '--out', out, '--batch_size', '2', '--num_generations', '3',
              '--max_new_tokens', '8', '--save_every', '2', '--log_every', '1']
    r = run(GRPO, *common, '--steps', '2')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 2/2' in r.stdout and 'mean reward' in r.stdout
    assert 'rewards: answer, format (every prompt has a ground-truth answer' in r.stdout, r.stdout  # answers: as before
    recs = read_metrics(out)
    assert [m['step'] for m in recs] == [1, 2]
    assert {'reward', 'format_reward', 'answer_reward', 'kl', 'reply_len'} <= set(recs[0])
    assert 0 < recs[0]['reply_len'] <= 8
    assert json.loads((out / 'rewards.json').read_text())['rewards'] == ['answer', 'format']
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


# MiniMind's RL prompt files (issue 12): SFT-shaped conversations ending in an empty reply slot, no answers.
RLAIF = {'minimind2': DATA / 'rlaif_mini_minimind2.jsonl',   # "" / "None" slots, multi-turn, a few turns without roles
         'minimind3': DATA / 'rlaif_minimind3.jsonl'}        # "无" slots, system turns, multi-turn
NO_ANSWER_LINE = 'rewards: format, length, repetition (no prompt in --data'
TINY = ['--steps', '2', '--batch_size', '2', '--num_generations', '2', '--max_new_tokens', '8', '--log_every', '1']


def reward_keys(record:dict) -> set: return {k for k in record if k.endswith('_reward')}


@pytest.mark.parametrize('shape', list(RLAIF))
def test_grpo_on_minimind_rlaif_prompts(tmp_path, reasoning_files, shape):
    "No ground truth: the run says its rewards are format, length, repetition (not answer), logs each, and records them."
    out = tmp_path / 'grpo'
    r = run(GRPO, '--init', reasoning_files['init'], '--data', RLAIF[shape], '--out', out, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert NO_ANSWER_LINE in r.stdout and 'so answer is off' in r.stdout, r.stdout
    n = len(RLAIF[shape].read_text(encoding='utf-8').splitlines())
    assert f'on {n} prompts' in r.stdout and 'rewards format+length+repetition' in r.stdout, r.stdout
    assert 'reward ' in r.stdout.splitlines()[-1] and 'repetition ' in r.stdout.splitlines()[-1]
    recs = read_metrics(out)
    assert [m['step'] for m in recs] == [1, 2]
    for m in recs:
        assert reward_keys(m) == {'format_reward', 'length_reward', 'repetition_reward'}, m
        assert all(0 <= m[k] <= 1 for k in reward_keys(m))
        assert m['reward'] == pytest.approx(sum(m[k] for k in reward_keys(m)), abs=1e-5)
    assert json.loads((out / 'rewards.json').read_text()) == dict(rewards=['format', 'length', 'repetition'], prompts=n,
                                                                  with_ground_truth=0)


def test_grpo_reward_flag_restricts_the_rewards(tmp_path, reasoning_files):
    out = tmp_path / 'grpo'
    r = run(GRPO, '--init', reasoning_files['init'], '--data', RLAIF['minimind2'], '--out', out, *TINY, '--reward', 'format,length')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'rewards: format, length (chosen with --reward)' in r.stdout, r.stdout
    assert all(reward_keys(m) == {'format_reward', 'length_reward'} for m in read_metrics(out))
    assert json.loads((out / 'rewards.json').read_text())['rewards'] == ['format', 'length']


@pytest.mark.parametrize('shape', list(RLAIF))
def test_grpo_answer_reward_without_ground_truth_is_one_line(tmp_path, reasoning_files, shape):
    out = tmp_path / 'grpo'
    r = run(GRPO, '--init', reasoning_files['init'], '--data', RLAIF[shape], '--out', out, *TINY, '--reward', 'answer,format')
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('minimind_grpo: --reward answer: no prompt in --data'), lines
    assert 'ground-truth answer' in lines[0] and 'format, length, repetition' in lines[0]
    assert not out.exists() and 'GRPO of' not in r.stdout           # before any work


def test_grpo_unknown_reward_is_one_line(tmp_path, reasoning_files):
    r = run(GRPO, '--init', reasoning_files['init'], '--data', RLAIF['minimind3'], '--out', tmp_path / 'grpo', '--reward', 'fluency')
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--reward 'fluency': unknown reward 'fluency'; choose from answer, format, length, repetition" in lines[0], lines


def test_grpo_prompts_of_minimind_rlaif_files():
    "The prompt is every turn before the reply slot: roles as written (a system turn stays one), else by position."
    from minimind.grpo import rl_records
    m2, m3 = rl_records(RLAIF['minimind2']), rl_records(RLAIF['minimind3'])
    assert len(m2) == 24 and len(m3) == 20 and all(r['answer'] is None for r in m2 + m3)
    roles = lambda recs: {tuple(m['role'] for m in r['messages']) for r in recs}
    assert roles(m2) == {('user',), ('user', 'assistant', 'user')}      # the role-less records too, by position
    assert roles(m3) == {('user',), ('system', 'user'), ('user', 'assistant', 'user')}
    bare = next(r for r in m2 if r['messages'][0]['content'] == '今天心情不好，怎么办？')   # a record without role keys
    assert [m['role'] for m in bare['messages']] == ['user', 'assistant', 'user']


def test_rule_rewards_point_the_right_way():
    from minimind.grpo import length_reward, repetition_reward, REWARDS
    varied = 'Leaves turn yellow in autumn because the green chlorophyll breaks down first.<|im_end|>'
    looping = 'the leaves the leaves the leaves the leaves the leaves the leaves<|im_end|>'
    assert repetition_reward(looping) < repetition_reward(varied)
    assert length_reward(varied) > length_reward(' '.join(['word'] * 380) + '<|im_end|>') > length_reward(' '.join(['word'] * 380))
    assert length_reward(varied) > length_reward('Yes.<|im_end|>')
    assert all(0 <= REWARDS[name](looping, 'x') <= 1 for name in REWARDS if not REWARDS[name].needs_model)   # 'model': a reward model scores it
