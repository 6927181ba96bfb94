"""The direction of each post-training update, not just "the weights changed" (weight decay alone changes them).

GRPO (chapter 15a): with mixed rewards the advantages are non-zero and one step raises the log-probability of the
rewarded reply and lowers the others'; with equal rewards the gradient is exactly zero; through the whole sampled loss
function the rewarded replies gain against the unrewarded. DPO (chapter 13): one step widens the chosen-minus-rejected
margin and lowers the loss; the real `dpo` stage raises the margin on the pairs it trained on. SFT (chapter 11): the loss
sends no gradient to the predictions at prompt positions and one step raises the replies' log-probability; the real
`sft` stage raises it on the conversations it trained on.

Every update here is plain SGD without weight decay, so a change can only come from the loss's gradient."""
import json, math

import pytest
import torch

from helpers import save_fresh_tiny
from minimind.config import MiniMindConfig
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import load_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope='module')
def tok(): return load_tokenizer()


def fresh_model(tok, seed:int=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=tok.vocab_size))


def sgd_step(model, loss, lr:float):
    "One plain gradient step (no momentum, no weight decay); returns the gradient's global norm."
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)) if grads else torch.tensor(0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None: p -= lr * p.grad
    return float(norm)


# ---------------------------------------------------------------- GRPO
def grpo_group(tok, G:int=4, L:int=6, seed:int=1):
    "One prompt and G fixed replies of L ordinary tokens (no EOS): `seqs` (G, T + L), `attn`, reply `mask` (G, L)."
    prompt = torch.tensor(tok.encode('3 + 4 = ?'))
    g = torch.Generator().manual_seed(seed)
    replies = torch.randint(10, tok.vocab_size, (G, L), generator=g)
    seqs = torch.cat([prompt.repeat(G, 1), replies], dim=1)
    return seqs, torch.ones_like(seqs), torch.ones(G, L, dtype=torch.long)


def reply_logps(model, seqs, attn, L):
    from minimind.grpo import token_logprobs
    return token_logprobs(model, seqs, attn, L).sum(dim=1)          # (G,) log-probability of each whole reply


@pytest.mark.parametrize('winner', [0, 2])
def test_grpo_step_raises_the_rewarded_reply(tok, winner):
    from minimind.grpo import group_advantages, grpo_loss, token_logprobs
    model = fresh_model(tok)
    seqs, attn, mask = grpo_group(tok)
    G, L = mask.shape
    rewards = torch.zeros(G); rewards[winner] = 1.0                   # one reply of four is right
    adv = group_advantages(rewards, G)
    assert adv[winner] > 0.5 and all(adv[i] < -0.1 for i in range(G) if i != winner)   # a real, non-zero advantage
    before = reply_logps(model, seqs, attn, L).detach()
    logp = token_logprobs(model, seqs, attn, L)
    loss, kl = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask)   # on-policy: ratio 1; reference = policy: KL 0
    assert float(kl) == 0.0
    assert sgd_step(model, loss, lr=0.05) > 1e-3
    change = reply_logps(model, seqs, attn, L).detach() - before
    others = torch.cat([change[:winner], change[winner + 1:]])
    assert change[winner] > 0.01, change                              # the rewarded reply became more likely
    assert others.mean() < -0.01 and change[winner] > others.max(), change   # the others less, on average


def test_grpo_equal_rewards_give_exactly_zero_gradient(tok):
    "All replies equally good: every advantage is 0, and on-policy with reference = policy the KL term's gradient is 0 too."
    from minimind.grpo import group_advantages, grpo_loss, token_logprobs
    model = fresh_model(tok)
    seqs, attn, mask = grpo_group(tok)
    adv = group_advantages(torch.ones(mask.shape[0]), mask.shape[0])
    assert torch.equal(adv, torch.zeros_like(adv))
    logp = token_logprobs(model, seqs, attn, mask.shape[1])
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask)
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_grpo_kl_term_pulls_back_towards_the_reference(tok):
    "Equal rewards, a policy that drifted from its reference: the step (from the KL penalty alone) lowers the KL estimate."
    from minimind.grpo import group_advantages, grpo_loss, token_logprobs
    reference, model = fresh_model(tok, seed=0), fresh_model(tok, seed=0)
    seqs, attn, mask = grpo_group(tok)
    G, L = mask.shape
    with torch.no_grad():
        for p in model.parameters(): p += 0.02 * torch.randn_like(p)   # drift
        logp_ref = token_logprobs(reference, seqs, attn, L)
    def step_loss():
        logp = token_logprobs(model, seqs, attn, L)
        return grpo_loss(logp, logp.detach(), logp_ref, group_advantages(torch.ones(G), G), mask, beta=1.0)
    loss, kl_before = step_loss()
    assert float(kl_before) > 1e-3
    assert sgd_step(model, loss, lr=0.05) > 1e-3
    _, kl_after = step_loss()
    assert float(kl_after) < 0.9 * float(kl_before), (kl_before, kl_after)


def test_grpo_loss_fn_rewards_win_through_the_sampler(tok, monkeypatch):
    """The stage's own loss function (sample a group, score, advantages, loss) with a rule reward that splits the
    sampled replies: after one step the rewarded replies gained log-probability against the unrewarded ones."""
    import minimind.grpo as grpo_mod
    from minimind.grpo import Reward, collate_prompts, grpo_loss_fn, token_logprobs
    from minimind.dpo import frozen_copy
    monkeypatch.setitem(grpo_mod.REWARDS, 'odd_length', Reward(lambda reply: float(len(reply) % 2 == 1)))
    sampled = []
    original = grpo_mod.sample_groups
    monkeypatch.setattr(grpo_mod, 'sample_groups', lambda *a, **k: sampled.append(original(*a, **k)) or sampled[-1])
    model = fresh_model(tok)
    loss_fn = grpo_loss_fn(frozen_copy(model), tok, num_generations=8, max_new_tokens=8, rewards=('odd_length',))
    prompts = [dict(prompt_ids=torch.tensor(tok.encode(q)), answer=None) for q in ('2 + 2 = ?', 'Who is Lily?')]
    batch = collate_prompts(prompts, pad_id=tok.pad_token_id)
    torch.manual_seed(3)
    loss, metrics = loss_fn(model, batch)
    s = sampled[0]
    won = torch.tensor([len(t) % 2 == 1 for t in s['texts']])
    assert 0 < int(won.sum()) < len(won), s['texts']                  # mixed rewards: the advantages are not all zero
    assert abs(float(metrics['reward']) - won.float().mean().item()) < 1e-6
    full = torch.cat([s['prompt_mask'], s['mask']], dim=1)
    L = s['replies'].shape[1]
    per_reply = lambda: (token_logprobs(model, s['seqs'], full, L) * s['mask']).sum(1).detach()
    before = per_reply()
    assert sgd_step(model, loss, lr=0.05) > 1e-3
    change = per_reply() - before
    assert change[won].mean() - change[~won].mean() > 0.01, change


# ---------------------------------------------------------------- DPO
def dpo_batch(tok, n:int=4):
    from minimind.corpus import default_corpus
    from minimind.dpo import collate_pairs, eval_pair
    with open(default_corpus()['dpo']) as f:      # single-turn pairs (in a multi-turn pair the first turns are shared)
        rows = [r for r in map(json.loads, f) if len(r['chosen']) == 2][:n]
    records = [dict(prompt=r['chosen'][0]['content'], chosen=r['chosen'][1]['content'], rejected=r['rejected'][1]['content'])
               for r in rows]
    return records, collate_pairs([eval_pair(tok, r, 128) for r in records], tok.pad_token_id)


def test_dpo_step_widens_the_margin_and_lowers_the_loss(tok):
    from minimind.dpo import DPOLoss, frozen_copy, sequence_logps
    model = fresh_model(tok)
    loss_fn = DPOLoss(frozen_copy(model), beta=0.1)
    _, batch = dpo_batch(tok)
    def margins():
        with torch.no_grad():
            c, r = sequence_logps(model, batch['input_ids'], batch['labels']).chunk(2)
        return c - r                                                      # (B,) chosen minus rejected log-prob
    m0 = margins()
    loss0, metrics0 = loss_fn(model, batch)
    assert abs(loss0.item() - math.log(2)) < 1e-5 and abs(float(metrics0['margin'])) < 1e-6   # policy = reference
    assert sgd_step(model, loss0, lr=0.05) > 1e-3
    loss1, metrics1 = loss_fn(model, batch)
    assert float(metrics1['margin']) > 1e-3 and loss1.item() < math.log(2) - 1e-4
    assert (margins() - m0).min() > 0, margins() - m0                   # every pair's margin widened


def test_dpo_stage_raises_the_margin_on_its_pairs(tmp_path, tok):
    "The real stage (AdamW with weight decay, the Trainer): the trained pairs' chosen-minus-rejected margin rises."
    from minimind.dpo import dpo, preference_logps
    from minimind.trainer import TrainConfig
    init = save_fresh_tiny(tmp_path / 'init')
    records, _ = dpo_batch(tok, 8)
    data = tmp_path / 'dpo.jsonl'
    data.write_text(''.join(json.dumps({'chosen': [dict(role='user', content=r['prompt']), dict(role='assistant', content=r['chosen'])],
                                        'rejected': [dict(role='user', content=r['prompt']), dict(role='assistant', content=r['rejected'])]},
                                       ensure_ascii=False) + '\n' for r in records) * 2)
    cfg = TrainConfig(out_dir=str(tmp_path / 'out'), steps=6, batch_size=4, lr=2e-3, max_seq_len=128, log_every=1,
                      save_every=6, progress=False)
    margin = lambda folder: (lambda lp: (lp[:, 0] - lp[:, 1]).mean().item())(
        preference_logps(MiniMindForCausalLM.from_pretrained(folder), tok, records, max_seq_len=128))
    dpo(cfg, init=init, data=data, val_fraction=0.1, cache_dir=tmp_path / 'cache')
    assert margin(tmp_path / 'out') - margin(init) > 0.5


# ---------------------------------------------------------------- SFT
def sft_batch(tok, n:int=4):
    from minimind.corpus import default_corpus
    from minimind.datasets import encode_chat
    from minimind.sft import collate_chats
    with open(default_corpus()['sft']) as f: chats = [json.loads(next(f))['conversations'] for _ in range(n)]
    return chats, collate_chats([encode_chat(tok, c, 128) for c in chats], tok.pad_token_id)


def reply_logp(model, batch):
    from minimind.dpo import sequence_logps
    with torch.no_grad(): return sequence_logps(model, batch['input_ids'], batch['labels'], batch['attention_mask'])


def test_sft_gradient_skips_the_prompt_and_raises_the_reply(tok):
    from minimind.trainer import default_loss
    model = fresh_model(tok)
    _, batch = sft_batch(tok)
    logits_seen = []
    def keep(module, args, out): out.retain_grad(); logits_seen.append(out)
    hook = model.lm_head.register_forward_hook(keep)
    loss, _ = default_loss(model, batch)
    hook.remove()
    before = reply_logp(model, batch)
    assert sgd_step(model, loss, lr=0.1) > 1e-3
    grad = logits_seen[0].grad                                             # (B, T, V): d loss / d logits
    predicts_reply = batch['labels'][:, 1:] != -100                        # position t predicts token t+1
    per_position = grad[:, :-1].abs().sum(-1)                              # (B, T-1)
    assert predicts_reply.any() and (~predicts_reply).any()
    assert torch.count_nonzero(per_position[~predicts_reply]) == 0         # prompts, system turns, padding: no gradient
    assert (per_position[predicts_reply] > 0).all()                        # every reply token: a gradient
    assert torch.count_nonzero(grad[:, -1]) == 0                           # the last position predicts nothing
    after = reply_logp(model, batch)
    assert (after - before).min() > 0, after - before                     # every reply became more likely


def test_sft_stage_raises_the_reply_logprob_on_its_conversations(tmp_path, tok):
    "The real stage (AdamW with weight decay, the Trainer): the trained conversations' replies become more likely."
    from minimind.sft import sft
    from minimind.trainer import TrainConfig
    init = save_fresh_tiny(tmp_path / 'init')
    chats, batch = sft_batch(tok, 8)
    data = tmp_path / 'sft.jsonl'
    data.write_text(''.join(json.dumps({'conversations': c}, ensure_ascii=False) + '\n' for c in chats) * 2)
    cfg = TrainConfig(out_dir=str(tmp_path / 'out'), steps=6, batch_size=4, lr=3e-3, max_seq_len=128, log_every=1,
                      save_every=6, progress=False)
    sft(cfg, init=init, data=data, val_fraction=0.1, cache_dir=tmp_path / 'cache')
    gain = reply_logp(MiniMindForCausalLM.from_pretrained(tmp_path / 'out'), batch) - reply_logp(MiniMindForCausalLM.from_pretrained(init), batch)
    assert gain.mean() > 1.0 and (gain > 0).all(), gain
