"""DPO (chapter 13): the loss against its closed form and against `trl`'s, and `minimind_dpo` end to end (a tiny run
from a saved model, resume, --help, a MiniMind-format dpo.jsonl, a clear error for a missing --init, the log-2 guard)."""
import json, math
from pathlib import Path

import pytest
import torch

from helpers import run, save_fresh_tiny
from minimind.trainer import read_metrics

REPO = Path(__file__).resolve().parents[1]
DPO = 'minimind.dpo:minimind_dpo'
TINY = ['--steps', '4', '--batch_size', '4', '--max_seq_len', '96', '--save_every', '2', '--eval_every', '2',
        '--log_every', '1', '--lr', '1e-3']


@pytest.fixture(scope='module')
def init(tmp_path_factory):
    "A fresh tiny model saved as the starting point (an SFT model in real use)."
    return save_fresh_tiny(tmp_path_factory.mktemp('init'))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "The first 120 pairs of the embedded DPO corpus (MiniMind's dpo.jsonl format)."
    from minimind.corpus import default_corpus
    path = tmp_path_factory.mktemp('data') / 'dpo_small.jsonl'
    with open(default_corpus()['dpo']) as f: path.write_text(''.join(next(f) for _ in range(120)))
    return path


def test_loss_closed_form():
    "Hand-computed: rewards 0.5 and -0.5, margin 1, loss log(1+e^-1); a tie gives log 2; gradients -β σ(-m)."
    from minimind.dpo import dpo_loss
    pc, pr = torch.tensor([-1., -4.], requires_grad=True), torch.tensor([-3., -2.], requires_grad=True)
    loss, m = dpo_loss(pc, pr, torch.tensor([-2., -3.]), torch.tensor([-2., -2.]), beta=0.5)
    # pair 0: margin 0.5*((−1+2) − (−3+2)) = 1; pair 1: 0.5*((−4+3) − (−2+2)) = −0.5
    assert math.isclose(loss.item(), (math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))) / 2, rel_tol=1e-6)
    assert m['reward_accuracy'].item() == 0.5 and math.isclose(m['margin'].item(), 0.25, rel_tol=1e-6)
    assert math.isclose(m['chosen_reward'].item(), (0.5 - 0.5) / 2, abs_tol=1e-7)
    loss.backward()
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert torch.allclose(pc.grad, torch.tensor([-0.5 * sig(-1), -0.5 * sig(0.5)]) / 2)
    assert torch.allclose(pr.grad, -pc.grad)
    tie, _ = dpo_loss(*[torch.tensor([-7.])] * 4, beta=0.1)
    assert abs(tie.item() - math.log(2)) < 1e-7


def _trl_sigmoid_loss(per_token_logps, ref_chosen, ref_rejected, completion_mask, beta):
    "trl's DPO sigmoid loss (DPOTrainer._compute_loss) on given per-token log-probs, without building a real trainer."
    from collections import defaultdict
    from types import SimpleNamespace
    from trl import DPOTrainer
    class Accel:  # the few accelerate calls the loss makes, for one process
        device = torch.device('cpu')
        gather = gather_for_metrics = staticmethod(lambda t: t)
    class Model(torch.nn.Module):  # returns what trl's fused LM head would: per-token log-probs of the labels
        def forward(self, **kw):
            n = per_token_logps.shape[1]
            return SimpleNamespace(log_probs=per_token_logps, entropy=torch.zeros_like(per_token_logps),
                                   mean_logits=torch.zeros_like(per_token_logps), is_top1=torch.zeros(per_token_logps.shape, dtype=torch.bool))
    trainer = DPOTrainer.__new__(DPOTrainer)  # skip __init__ (model loading, datasets): set what _compute_loss reads
    vars(trainer).update(model=Model(), accelerator=Accel(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                         f_divergence_type='reverse_kl', loss_types=['sigmoid'], loss_weights=[1.0], beta=beta,
                         label_smoothing=0.0, use_weighting=False, _metrics={'train': defaultdict(list), 'eval': defaultdict(list)},
                         _total_train_tokens=0, _tp_size=1)
    inputs = dict(input_ids=torch.zeros(completion_mask.shape, dtype=torch.long), attention_mask=torch.ones_like(completion_mask),
                  completion_mask=completion_mask, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    return trainer._compute_loss(trainer.model, inputs, False), trainer._metrics['train']


def test_loss_matches_trl():
    "Our loss on a tiny model's log-probs equals trl's DPO sigmoid loss fed the same per-token log-probs and reference."
    pytest.importorskip('trl')
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.dpo import token_logps, dpo_loss
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=300))
    ids = torch.randint(3, 300, (6, 10))                       # 3 chosen rows, then 3 rejected rows
    labels = ids.clone(); labels[:, :4] = -100; labels[1, 8:] = -100; labels[4, 6:] = -100   # replies of various lengths
    with torch.no_grad(): logps, mask = token_logps(model(ids).logits, labels)          # (6, 9)
    ours_policy = logps.sum(-1)
    ref = ours_policy + torch.tensor([0.3, -0.2, 0.1, -0.4, 0.5, 0.0])                   # a reference somewhat off the policy
    for beta in (0.1, 0.5):
        ours, ours_metrics = dpo_loss(*ours_policy.chunk(2), *ref.chunk(2), beta=beta)
        # trl's completion_mask is aligned with input_ids; it shifts it by one itself (as we shift the labels)
        completion_mask = torch.cat([torch.zeros(6, 1, dtype=torch.long), mask.long()], dim=1)
        theirs, their_metrics = _trl_sigmoid_loss(logps, *ref.chunk(2), completion_mask, beta)
        assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)
        assert math.isclose(ours_metrics['margin'].item(), their_metrics['rewards/margins'][-1], rel_tol=1e-5)
        assert math.isclose(ours_metrics['reward_accuracy'].item(), their_metrics['rewards/accuracies'][-1])


def test_help_lists_the_flags():
    r = run(DPO, '--help')
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--init', '--data', '--out', '--beta', '--length-norm', '--steps', '--batch-size', '--lr', '--resume',
                 '--stuck-steps', '--deepspeed', '--tokenizer'):
        assert flag in r.stdout, flag


def test_tiny_run_and_resume(tmp_path, init, data):
    "A 4-step run on a MiniMind-format dpo.jsonl writes a loadable model whose loss left log 2; resume continues to 6."
    out = tmp_path / 'out'
    r = run(DPO, '--init', init, '--data', data, '--out', out, *TINY, cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 4/4' in r.stdout, r.stdout[-2000:]
    recs = read_metrics(out)
    train = [m for m in recs if 'loss' in m]
    assert [m['step'] for m in train] == [1, 2, 3, 4]
    assert abs(train[0]['loss'] - math.log(2)) < 1e-5           # policy = reference at step 1
    assert train[-1]['loss'] < math.log(2) - 1e-3                # and then it moved
    assert {'reward_accuracy', 'margin', 'chosen_reward', 'rejected_reward', 'logp_chosen', 'logp_rejected'} <= set(train[0])
    assert any('val_loss' in m for m in recs)
    from minimind.model import MiniMindForCausalLM
    from safetensors.torch import load_file
    policy = load_file(str(out / 'model.safetensors')); start = load_file(str(init / 'model.safetensors'))
    assert any(not torch.equal(policy[k], start[k]) for k in start)   # trained...
    assert MiniMindForCausalLM.from_pretrained(out).config.hidden_size == 128
    assert (out / 'tokenizer.json').exists()
    r = run(DPO, '--init', init, '--data', data, '--out', out, *TINY[2:], '--steps', '6', '--resume', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in read_metrics(out) if 'loss' in m] == list(range(1, 7))
    state = json.loads((out / 'step-0000006' / 'trainer_state.json').read_text())
    assert state['step'] == 6 and state['stage'] == 'dpo'


def test_stuck_loss_is_stopped(tmp_path, init, data):
    "MiniMind's lr of 1e-8 leaves a fresh run at log 2: the guard stops it with a message, not a traceback."
    r = run(DPO, '--init', init, '--data', data, '--out', tmp_path / 'out', *TINY, '--lr', '1e-8', '--stuck_steps', '3',
            cache=tmp_path / 'cache')
    assert r.returncode != 0
    assert 'still log 2' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


def test_missing_init(tmp_path, data):
    r = run(DPO, '--init', tmp_path / 'no_model', '--data', data, '--out', tmp_path / 'out', *TINY)
    assert r.returncode != 0 and 'no_model' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
