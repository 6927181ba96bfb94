"""Train a tiny MiniMind on fixed random tokens with `minimind.trainer.Trainer`; launched by tests/test_trainer.py.

Run as `python train_tiny.py --out DIR ...` (one process) or under `torchrun --nproc_per_node 2` (DDP, gloo).
A `TrainingError` (an expected stop: divergence, a full disk, an unusable checkpoint) is printed as one paragraph on
stderr, without a traceback, and exits with code 1, as the stage commands do; a `FlagError` (a bad --out) exits with 2."""
import argparse, sys, time
import torch
from minimind.config import MiniMindConfig, FlagError
from minimind.model import MiniMindForCausalLM
from minimind.trainer import Trainer, TrainConfig, TrainingError, default_loss

class RandomTokens(torch.utils.data.Dataset):
    "n fixed sequences (the same on every rank: seeded): runs start + k*stride of random starts and strides 1-3, learnable in a few steps."
    def __init__(self, n, seq_len, vocab, seed=0):
        g = torch.Generator().manual_seed(seed)
        start, stride = torch.randint(0, vocab - 3, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
        self.data = 3 + (start + stride * torch.arange(seq_len)) % (vocab - 3)  # (n, seq_len), ids 3.. (0-2 are special)
    def __len__(self): return len(self.data)
    def __getitem__(self, i): return dict(input_ids=self.data[i], labels=self.data[i])

class StopAt(Trainer):
    "A trainer that requests a clean stop (as SIGTERM would) during optimizer step `stop_at`."
    stop_at = 0
    def _micro_step(self, batch, last):
        if self.stop_at and self.step == self.stop_at - 1: self.stop_requested = True
        return super()._micro_step(batch, last)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--batch_size', type=int, default=4)
    p.add_argument('--accum', type=int, default=2)
    p.add_argument('--save_every', type=int, default=5)
    p.add_argument('--dropout', type=float, default=0.0)
    p.add_argument('--deepspeed', default=None)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--stop_at', type=int, default=0, help='request a clean stop during this step')
    p.add_argument('--nan_at', type=int, default=0, help='make the loss NaN from this optimizer step on')
    p.add_argument('--nan_grad_at', type=int, default=0, help='keep the loss finite but make its gradient NaN from this optimizer step on')
    p.add_argument('--nan_grad_for', type=int, default=10**9, help='... for this many steps')
    p.add_argument('--step_delay', type=float, default=0.0, help='seconds to sleep per micro-step (to kill mid-run)')
    p.add_argument('--n', type=int, default=96)
    p.add_argument('--seq_len', type=int, default=32)
    p.add_argument('--compile', action='store_true')
    p.add_argument('--offload', action='store_true', help='DeepSpeed: optimizer state in CPU memory')
    p.add_argument('--moe', action='store_true', help='the tiny-moe preset instead of tiny')
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights in every process and every run
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny-moe' if a.moe else 'tiny', vocab_size=256, num_hidden_layers=2, dropout=a.dropout))
    cfg = TrainConfig(out_dir=a.out, steps=a.steps, batch_size=a.batch_size, accum=a.accum, lr=3e-3, warmup_steps=3,
                      log_every=1, save_every=a.save_every, resume=a.resume, deepspeed=a.deepspeed, progress=False,
                      keep_checkpoints=3, compile=a.compile, offload=a.offload)
    def loss_fn(model, batch):
        if a.step_delay: time.sleep(a.step_delay)
        loss, metrics = default_loss(model, batch)
        step = trainer.step + 1
        if a.nan_at and step >= a.nan_at: loss = loss * float('nan')
        if a.nan_grad_at and a.nan_grad_at <= step < a.nan_grad_at + a.nan_grad_for:
            loss = loss + (loss * 0).sqrt() * 0  # + 0 to the value; gradient 0 * inf = NaN
        return loss, metrics
    trainer = StopAt(model, RandomTokens(a.n, a.seq_len, 256), cfg, loss_fn=loss_fn,
                     val_ds=RandomTokens(16, a.seq_len, 256, seed=1))
    trainer.stop_at = a.stop_at
    try: trainer.fit()
    except FlagError as e: print(f"train_tiny: {e}", file=sys.stderr); sys.exit(2)
    except TrainingError as e: print(f"train_tiny: {e}", file=sys.stderr); sys.exit(1)
    print(f"done step={trainer.step} stopped_early={trainer.stopped_early} skipped={trainer.skipped_steps}", flush=True)

if __name__ == '__main__': main()
