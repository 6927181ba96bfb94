"""PPO and CISPO (chapter 15c): the losses move the policy and the critic in the expected direction on real model
weights; `minimind_ppo` and `minimind_cispo` end to end, exact resume (the critic included), bad flags, MiniMind's
RLAIF prompts."""
import copy, json, math
from pathlib import Path

import pytest
import torch

from helpers import run
from minimind.trainer import read_metrics

PPO, CISPO = 'minimind.ppo:minimind_ppo', 'minimind.ppo:minimind_cispo'


def tiny(seed=0):
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=64, num_hidden_layers=2))


def reply_logp(model, seqs, n):
    from minimind.grpo import token_logprobs
    return token_logprobs(model, seqs, torch.ones_like(seqs), n).sum(dim=1)


def sgd_step(params, loss, lr):
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad(); loss.backward(); opt.step()


def test_ppo_step_raises_the_rewarded_reply_and_fits_the_critic():
    "Two sampled replies, reward 1 and 0, GAE on zero values, whitened: one PPO step raises the rewarded reply's log-prob, lowers the other's, and the value loss falls."
    from minimind.ppo import ActorCritic, gae, whiten, ppo_policy_loss, clipped_value_loss, last_token_rewards, _reply_logprobs_values
    torch.set_num_threads(1)
    ac = ActorCritic.from_policy(tiny())
    seqs = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 20, 21, 22]])
    s = dict(seqs=seqs, full_mask=torch.ones_like(seqs), replies=seqs[:, 3:])
    mask = torch.ones(2, 3)
    logp, values = _reply_logprobs_values(ac, s)
    old_logp, old_values = logp.detach(), values.detach()
    adv, ret = gae(last_token_rewards(torch.tensor([1.0, 0.0]), mask), old_values, mask, 1.0, 0.95)
    adv = whiten(adv, mask)
    assert (adv[0] > 0).all() and (adv[1] < 0).all()
    before = reply_logp(ac.policy(), seqs, 3).detach()
    v_before = clipped_value_loss(values, old_values, ret, mask, 0.2).item()
    policy_loss, _ = ppo_policy_loss(logp, old_logp, adv, mask)
    sgd_step(ac.parameters(), policy_loss + 0.5 * clipped_value_loss(values, old_values, ret, mask, 0.2), lr=0.02)
    after = reply_logp(ac.policy(), seqs, 3).detach()
    assert after[0] > before[0] and after[1] < before[1], (before, after)
    _, values_after = _reply_logprobs_values(ac, s)
    assert clipped_value_loss(values_after, old_values, ret, mask, 0.2).item() < v_before


def test_policy_loss_does_not_reach_the_critic_nor_the_value_loss_the_policy():
    from minimind.ppo import ActorCritic, _reply_logprobs_values, masked_mean
    ac = ActorCritic.from_policy(tiny())
    seqs = torch.tensor([[5, 6, 7, 8, 9, 10]])
    logp, values = _reply_logprobs_values(ac, dict(seqs=seqs, full_mask=torch.ones_like(seqs), replies=seqs[:, 3:]))
    logp.sum().backward(retain_graph=True)
    assert all(p.grad is None for n, p in ac.named_parameters() if n.startswith(('critic.', 'value_head.')))
    ac.zero_grad(set_to_none=True)
    (values - 1).pow(2).sum().backward()
    assert all(p.grad is None for n, p in ac.named_parameters() if not n.startswith(('critic.', 'value_head.')))
    assert ac.value_head.weight.grad.abs().sum() > 0


def test_cispo_keeps_learning_where_the_clip_drops_the_token():
    "A reply whose ratio is already past 1 + eps: GRPO's clipped loss gives it no gradient, CISPO raises it further (and lowers the penalised one)."
    from minimind.grpo import grpo_loss, token_logprobs
    from minimind.ppo import cispo_loss
    torch.set_num_threads(1)
    model = tiny()
    seqs = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 20, 21, 22]])
    logp = token_logprobs(model, seqs, torch.ones_like(seqs), 3)
    old = logp.detach() - math.log(1.5)                  # the current policy makes each token 1.5x likelier than the sampler did
    adv, mask = torch.tensor([1.0, 0.0]), torch.ones(2, 3)
    loss, _ = grpo_loss(logp, old, logp.detach(), adv, mask, clip_eps=0.2, beta=0.0)
    loss.backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())   # every token clipped away
    model.zero_grad(set_to_none=True)
    before = reply_logp(model, seqs, 3).detach()
    loss, _, clipped = cispo_loss(logp, old, logp.detach(), adv, mask, eps_high=5.0, beta=0.0)
    assert clipped.item() == 0
    sgd_step(model.parameters(), loss, lr=0.02)
    after = reply_logp(model, seqs, 3).detach()
    assert after[0] > before[0], (before, after)


def test_help_lists_the_flags():
    for script, flags in ((PPO, ('--updates', '--target-kl', '--gamma', '--lam', '--vf-coef', '--value-clip', '--num-generations',
                                 '--beta', '--reward', '--resume')),
                          (CISPO, ('--updates', '--eps-high', '--algo', '--num-generations', '--reward'))):
        r = run(script, '--help')
        assert r.returncode == 0, r.stderr[-2000:]
        for flag in flags: assert flag in r.stdout, (script, flag)


@pytest.mark.parametrize('script,flags,says', [
    (PPO, ['--updates', '0'], '--updates'), (PPO, ['--lam', '1.5'], '--lam'), (PPO, ['--target_kl', '-1'], '--target_kl'),
    (CISPO, ['--algo', 'ppo'], "--algo 'ppo': choose cispo or grpo"), (CISPO, ['--eps_high', '0.5'], '--eps_high'),
])
def test_bad_flags_exit_2_with_one_line(script, flags, says, tmp_path):
    r = run(script, '--out', tmp_path / 'out', *flags)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert says.replace('_', '-') in r.stderr.replace('_', '-') and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists()


def test_ppo_end_to_end_and_exact_resume(tmp_path, reasoning_files):
    "3 steps straight = 2 steps + resume, bit for bit: policy, critic and the sampling RNG."
    from safetensors.torch import load_file
    common = ['--init', reasoning_files['init'], '--data', reasoning_files['rl'], '--batch_size', '2', '--num_generations', '2',
              '--max_new_tokens', '8', '--save_every', '2', '--log_every', '1', '--lr', '1e-3', '--warmup_steps', '1',
              '--min_lr', '1e-3', '--updates', '3', '--reward', 'repetition,format']
    r = run(PPO, *common, '--out', tmp_path / 'straight', '--steps', '3')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 3/3' in r.stdout and 'explained variance' in r.stdout, r.stdout[-1500:]
    recs = read_metrics(tmp_path / 'straight')
    assert {'value_loss', 'explained_variance', 'approx_kl', 'clipfrac', 'kept', 'kl', 'reward', 'updates'} <= set(recs[0])
    assert json.loads((tmp_path / 'straight' / 'rewards.json').read_text())['rewards'] == ['repetition', 'format']
    assert run(PPO, *common, '--out', tmp_path / 'resumed', '--steps', '2').returncode == 0
    r = run(PPO, *common, '--out', tmp_path / 'resumed', '--steps', '3', '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ('model.safetensors', 'critic.safetensors'):
        a, b = (load_file(str(tmp_path / run_ / name)) for run_ in ('straight', 'resumed'))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    start, policy = (load_file(str(f / 'model.safetensors')) for f in (reasoning_files['init'], tmp_path / 'straight'))
    assert any(not torch.equal(policy[k], start[k]) for k in start)      # the policy learned
    critic = load_file(str(tmp_path / 'straight' / 'critic.safetensors'))
    assert critic['value_head.weight'].abs().sum() > 0                       # the critic learned
    from minimind.stage import load_checkpoint_folder
    load_checkpoint_folder(tmp_path / 'straight')                             # the output is a plain model folder


def test_cispo_and_grpo_through_several_updates_on_rlaif_prompts(tmp_path):
    "MiniMind's RLAIF shape (a blank last reply, no ground truth): the default rewards are format, length, repetition."
    from helpers import save_fresh_tiny
    save_fresh_tiny(tmp_path / 'init')
    data = tmp_path / 'rlaif.jsonl'
    rows = [[{'role': 'user', 'content': f'请讲一个关于数字 {i} 的故事'}, {'role': 'assistant', 'content': ''}] for i in range(8)]
    data.write_text('\n'.join(json.dumps(dict(conversations=c), ensure_ascii=False) for c in rows) + '\n', encoding='utf-8')
    for algo in ('cispo', 'grpo'):
        out = tmp_path / algo
        r = run(CISPO, '--init', tmp_path / 'init', '--data', data, '--out', out, '--steps', '2', '--batch_size', '2',
                '--num_generations', '2', '--max_new_tokens', '8', '--updates', '2', '--algo', algo)
        assert r.returncode == 0, r.stderr[-3000:]
        assert 'rewards: format, length, repetition' in r.stdout, r.stdout[-1500:]
        rec = read_metrics(out)[-1]
        assert rec['updates'] == 2 and 0 <= rec['kept'] <= 1 and 'clipped' in rec


def test_cispo_resume_is_exact(tmp_path, reasoning_files):
    "CISPO with two updates per batch: 3 steps straight = 2 steps + resume, bit for bit (the updates stay within a step)."
    from safetensors.torch import load_file
    common = ['--init', reasoning_files['init'], '--data', reasoning_files['rl'], '--batch_size', '2', '--num_generations', '3',
              '--max_new_tokens', '8', '--save_every', '2', '--log_every', '1', '--lr', '1e-3', '--warmup_steps', '1',
              '--min_lr', '1e-3', '--updates', '2', '--reward', 'repetition,format']
    assert run(CISPO, *common, '--out', tmp_path / 'straight', '--steps', '3').returncode == 0
    assert run(CISPO, *common, '--out', tmp_path / 'resumed', '--steps', '2').returncode == 0
    r = run(CISPO, *common, '--out', tmp_path / 'resumed', '--steps', '3', '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / 'model.safetensors')) for d in ('straight', 'resumed'))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m['updates'] for m in read_metrics(tmp_path / 'resumed')] == [2, 2, 2]
