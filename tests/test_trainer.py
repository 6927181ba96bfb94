"""Multi-process and crash tests of `minimind.trainer` (chapter 09): DDP equivalence, kill-and-resume, resume on
another world size, DeepSpeed ZeRO-2, NaN loss and NaN gradient, SIGTERM, unusable checkpoints, a full disk. Most runs
are subprocesses of tests/dist_scripts/train_tiny.py; a few run in this process to make one write fail."""
import errno, json, math, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / 'dist_scripts' / 'train_tiny.py'
BIN = Path(sys.executable).parent


def env():
    e = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'): e.pop(k, None)
    return e


def cmd(out, nproc=1, **kw):
    "The command line that trains with `nproc` processes (torchrun when > 1) and flags `kw`."
    args = [str(SCRIPT), '--out', str(out)]
    for k, v in kw.items():
        if v is True: args.append(f'--{k}')
        elif v not in (None, False): args += [f'--{k}', str(v)]
    if nproc == 1: return [sys.executable, *args]
    return [str(BIN / 'torchrun'), '--nnodes', '1', '--nproc_per_node', str(nproc), '--rdzv_backend', 'c10d',
            '--rdzv_endpoint', f'127.0.0.1:{free_port()}', *args]


def train(out, nproc=1, timeout=240, check=True, **kw):
    r = subprocess.run(cmd(out, nproc, **kw), capture_output=True, text=True, env=env(), timeout=timeout, cwd=REPO)
    if check and r.returncode != 0: raise AssertionError(f"training failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def losses(out) -> dict:
    "step -> training loss from metrics.jsonl."
    recs = [json.loads(l) for l in (Path(out) / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    return {r['step']: r['loss'] for r in recs if 'loss' in r}


def weights(out) -> dict:
    return load_file(str(Path(out) / 'model.safetensors'))


def latest(out) -> str:
    return (Path(out) / 'latest').read_text().strip()


def test_ddp_matches_single_process(tmp_path):
    "2 processes x batch 4 follow the loss trajectory of 1 process x batch 8 (same global batch) within 1e-5."
    train(tmp_path / 'one', steps=10, batch_size=8)
    train(tmp_path / 'two', nproc=2, steps=10, batch_size=4)
    a, b = losses(tmp_path / 'one'), losses(tmp_path / 'two')
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert a[10] < a[1] - 0.3, "the loss should fall"
    diff = max(abs(a[s] - b[s]) for s in a)
    assert diff <= 1e-5, f"loss trajectories differ by {diff}"
    wa, wb = weights(tmp_path / 'one'), weights(tmp_path / 'two')
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_resume_on_another_world_size(tmp_path):
    "A run stopped at step 5 on 2 processes and resumed on 1 continues the 1-process trajectory (same data position)."
    train(tmp_path / 'ref', steps=10, batch_size=8)
    r = train(tmp_path / 'run', nproc=2, steps=10, batch_size=4, stop_at=5)
    assert 'stopped_early=True' in r.stdout and latest(tmp_path / 'run') == 'step-0000005'
    state = json.loads((tmp_path / 'run' / 'step-0000005' / 'trainer_state.json').read_text())
    assert (state['world_size'], state['step'], state['position']) == (2, 5, 5 * 2 * 8)  # 2 micro-batches of 8 per step
    train(tmp_path / 'run', steps=10, batch_size=8, resume=True)
    a, b = losses(tmp_path / 'ref'), losses(tmp_path / 'run')
    assert sorted(b) == list(range(1, 11))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-5


def test_kill_and_resume_is_exact(tmp_path):
    "SIGKILL at a random step, resume: the final weights equal an uninterrupted run's, bit for bit (dropout on)."
    kw = dict(steps=24, save_every=3, dropout=0.1)
    train(tmp_path / 'straight', **kw)
    kill_after = random.Random().randint(4, 20)
    print(f'killing after step {kill_after}')
    out = tmp_path / 'killed'
    proc = subprocess.Popen(cmd(out, step_delay=0.05, **kw), env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / 'metrics.jsonl').exists() and max(losses(out), default=0) >= kill_after: break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert (out / 'latest').exists()
    train(out, resume=True, **kw)
    a, b = weights(tmp_path / 'straight'), weights(out)
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), f"{k} differs after kill at step {kill_after}"
    assert losses(out) == losses(tmp_path / 'straight')  # the trajectory too, with the killed run's tail dropped


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    r = train(tmp_path / 'nan', steps=20, save_every=5, nan_at=8, check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]  # a TrainingError: one paragraph
    assert r.stderr.strip().splitlines()[-1].startswith('train_tiny: loss is nan at step 8')
    assert 'step-0000005' in r.stderr  # the message names the last good checkpoint
    assert latest(tmp_path / 'nan') == 'step-0000005'
    w = weights(tmp_path / 'nan')
    assert all(torch.isfinite(v).all() for v in w.values())
    assert max(losses(tmp_path / 'nan')) == 7


def records(out) -> list:
    return [json.loads(l) for l in (Path(out) / 'metrics.jsonl').read_text().splitlines() if l.strip()]


def all_finite(out) -> bool:
    return all(torch.isfinite(v).all() for v in weights(out).values())


@pytest.mark.parametrize('nproc,deepspeed', [(1, None), (2, None), (2, 0), (2, 2)], ids=['single', 'ddp', 'zero0', 'zero2'])
def test_nan_gradient_is_skipped(tmp_path, nproc, deepspeed):
    "A finite loss with a NaN gradient at step 4: the update is skipped (weights stay finite), counted, and training goes on."
    if deepspeed is not None: pytest.importorskip('deepspeed')
    r = train(tmp_path / 'run', nproc=nproc, steps=8, batch_size=4, save_every=4, nan_grad_at=4, nan_grad_for=1,
              deepspeed=deepspeed, timeout=400)
    recs = {x['step']: x for x in records(tmp_path / 'run') if 'loss' in x}
    assert sorted(recs) == list(range(1, 9)) and all(math.isfinite(x['loss']) for x in recs.values())
    assert not math.isfinite(recs[4]['grad_norm']) and recs[4]['skipped'] == 1 and recs[8]['skipped'] == 1
    assert all(math.isfinite(recs[s]['grad_norm']) for s in recs if s != 4)
    assert all_finite(tmp_path / 'run') and all_finite(tmp_path / 'run' / 'step-0000004')
    assert recs[8]['loss'] < recs[1]['loss']


def test_nan_gradients_stop_naming_a_good_checkpoint(tmp_path):
    "NaN gradients from step 10 (a checkpoint step) on: 5 skipped steps in a row stop the run; step 10's checkpoint is finite."
    out = tmp_path / 'run'
    r = train(out, steps=20, save_every=5, nan_grad_at=10, check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'gradient norm is nan at step 14, 5 steps in a row' in r.stderr and 'step-0000010 (step 10)' in r.stderr
    assert latest(out) == 'step-0000010' and all_finite(out / 'step-0000010') and all_finite(out)
    assert max(losses(out)) == 13  # step 14 stopped before it was logged


def test_unusable_checkpoint_on_one_rank_falls_back_on_all(tmp_path):
    "Rank 1's RNG file of the newest checkpoint is damaged: both ranks pass over it, resume from the one before, and continue exactly."
    out = tmp_path / 'run'
    train(out, nproc=2, steps=10, batch_size=4, save_every=5)
    before = losses(out)
    (out / 'step-0000010' / 'rng' / 'rank1.json').write_text('{"python": [3, [1, 2')
    r = train(out, nproc=2, steps=10, batch_size=4, save_every=5, resume=True)
    assert 'rank1.json: not JSON' in r.stdout and 'resuming from' in r.stdout and 'step-0000005 (step 5) instead' in r.stdout, r.stdout
    after = losses(out)
    assert sorted(after) == list(range(1, 11)) and max(abs(before[s] - after[s]) for s in before) <= 1e-6


def payload_file(path, marker):
    "Write to `path` a torch.save file whose unpickling runs `exec`, creating `marker`."
    class Payload:
        def __reduce__(self): return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))
    torch.save(Payload(), path)


def test_crafted_rng_pickle_is_refused(tmp_path):
    "Every checkpoint's RNG file replaced by a pickle that would run code (an older checkpoint's rank0.pt): refused, never run."
    out, marker = tmp_path / 'run', tmp_path / 'marker'
    train(out, steps=6, save_every=3)
    for ckpt in (out / 'step-0000003', out / 'step-0000006'):
        (ckpt / 'rng' / 'rank0.json').unlink(); payload_file(ckpt / 'rng' / 'rank0.pt', marker)
    r = train(out, steps=8, save_every=3, resume=True, check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'step-0000006/rng/rank0.pt: holds more than tensors and plain values' in r.stderr
    assert 'step-0000003/rng/rank0.pt: holds more than tensors and plain values' in r.stderr
    assert not marker.exists()


def test_crafted_deepspeed_file_is_refused(tmp_path):
    "A DeepSpeed shard replaced by a pickle that would run code: refused before DeepSpeed (which unpickles in full) reads it."
    pytest.importorskip('deepspeed')
    out, marker = tmp_path / 'run', tmp_path / 'marker'
    train(out, nproc=2, steps=2, batch_size=4, save_every=2, deepspeed=2, timeout=400)
    shard = out / 'step-0000002' / 'deepspeed' / 'state' / 'mp_rank_00_model_states.pt'
    assert shard.exists()
    payload_file(shard, marker)
    r = train(out, nproc=2, steps=4, batch_size=4, save_every=2, deepspeed=2, resume=True, timeout=400, check=False)
    assert r.returncode != 0 and 'mp_rank_00_model_states.pt: holds more than tensors and plain values' in r.stderr, r.stderr[-3000:]
    assert not marker.exists()


def test_full_disk_stops_cleanly(tmp_path):
    "A real full disk (a 12 MB tmpfs: the second checkpoint does not fit): one paragraph naming the full disk, nothing half-written left, the last checkpoint loads."
    if shutil.which('unshare') is None or os.geteuid() != 0: pytest.skip('needs unshare and root to mount a small tmpfs')
    out, log = tmp_path / 'small', tmp_path / 'stderr.txt'
    out.mkdir()
    check = ("from minimind.trainer import read_weights, latest_checkpoint; "
             f"print('loads', latest_checkpoint('{out}').name, len(read_weights(latest_checkpoint('{out}'))), len(read_weights('{out}')))")
    script = (f"mount -t tmpfs -o size=12m tmpfs {out} || exit 99\n"   # the tmpfs lives as long as this private mount namespace
              f"{' '.join(map(str, cmd(out, steps=20, save_every=2)))} 2> {log}; rc=$?\n"
              f"ls -a {out}; {sys.executable} -c \"{check}\"; exit $rc\n")
    r = subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script], capture_output=True,
                       text=True, env=env(), timeout=300, cwd=REPO)
    if r.returncode == 99: pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()[:200]}')
    stderr = log.read_text()
    assert r.returncode == 1 and 'Traceback' not in stderr, stderr[-3000:]
    assert 'the disk is full' in stderr and 'the last good checkpoint is' in stderr, stderr[-3000:]
    assert not [n for n in r.stdout.split() if '.tmp' in n], r.stdout
    assert 'loads step-0000002' in r.stdout, r.stdout + r.stderr[-2000:]


def test_full_disk_while_publishing_weights(tmp_path, monkeypatch):
    "ENOSPC while copying the new weights to out_dir: a TrainingError naming the last good checkpoint; no temporary left; out_dir's weights still the last good step's."
    trainer = pytest.importorskip('minimind.trainer')
    sys.path.insert(0, str(REPO / 'tests' / 'dist_scripts'))
    from train_tiny import RandomTokens
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=256, num_hidden_layers=2))
    cfg = trainer.TrainConfig(out_dir=str(tmp_path / 'run'), steps=6, batch_size=4, save_every=3, progress=False)
    copy, calls = shutil.copyfile, []
    def copy_until_full(src, dst, *a, **kw):
        calls.append(dst)
        if len(calls) > 2:  # the first save's two files (config.json, model.safetensors) go through
            Path(dst).write_bytes(b'\0' * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return copy(src, dst, *a, **kw)
    monkeypatch.setattr(trainer.shutil, 'copyfile', copy_until_full)
    t = trainer.Trainer(model, RandomTokens(32, 16, 256), cfg)
    with pytest.raises(trainer.TrainingError, match=r'could not save checkpoint step-0000006: .*the disk is full; the last good checkpoint is .*step-0000003 \(step 3\)'):
        t.fit()
    out = tmp_path / 'run'
    assert not [p.name for p in out.iterdir() if '.tmp' in p.name]
    assert latest(out) == 'step-0000003' and [p.name for p in trainer.step_folders(out)] == ['step-0000003']
    assert (out / 'model.safetensors').read_bytes() == (out / 'step-0000003' / 'model.safetensors').read_bytes()


def test_sigterm_saves_and_exits(tmp_path):
    out = tmp_path / 'term'
    proc = subprocess.Popen(cmd(out, steps=200, save_every=1000, step_delay=0.05), env=env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / 'metrics.jsonl').exists() and max(losses(out), default=0) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert 'SIGTERM' in stdout + stderr and 'stopped_early=True' in stdout
    step = int(latest(out).split('-')[1])
    assert 3 <= step < 200 and max(losses(out)) == step  # saved exactly where it stopped


def test_deepspeed_zero2_trains_checkpoints_resumes(tmp_path):
    "ZeRO-2 on 2 CPU processes: trains, checkpoints, and a stopped + resumed run equals an uninterrupted one."
    pytest.importorskip('deepspeed')
    kw = dict(nproc=2, steps=6, batch_size=4, save_every=3, deepspeed=2, timeout=400)
    train(tmp_path / 'straight', **kw)
    a = losses(tmp_path / 'straight')
    assert sorted(a) == list(range(1, 7)) and all(math.isfinite(v) for v in a.values()) and a[6] < a[1]
    assert (tmp_path / 'straight' / 'step-0000003' / 'deepspeed').is_dir()
    r = train(tmp_path / 'resumed', stop_at=3, **kw)
    assert 'stopped_early=True' in r.stdout and latest(tmp_path / 'resumed') == 'step-0000003'
    train(tmp_path / 'resumed', resume=True, **kw)
    b = losses(tmp_path / 'resumed')
    assert sorted(b) == list(range(1, 7))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-5
    wa, wb = weights(tmp_path / 'straight'), weights(tmp_path / 'resumed')
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_deepspeed_config_from_file(tmp_path):
    trainer = pytest.importorskip('minimind.trainer')
    path = tmp_path / 'ds.json'
    path.write_text(json.dumps(dict(train_batch_size=999, zero_optimization=dict(stage=1))))
    ds = trainer.deepspeed_config(trainer.TrainConfig(deepspeed=str(path), batch_size=3, accum=5), torch.float32, torch.device('cpu'))
    assert ds['zero_optimization'] == {'stage': 1} and 'train_batch_size' not in ds
    assert (ds['train_micro_batch_size_per_gpu'], ds['gradient_accumulation_steps']) == (3, 5)
    with pytest.raises(FileNotFoundError, match='no such file'):
        trainer.deepspeed_config(trainer.TrainConfig(deepspeed=str(tmp_path / 'nope.json')), torch.float32, torch.device('cpu'))


def test_multi_node_torchrun_matches_single_process(tmp_path):
    "Two torchrun 'nodes' (1 process each) joined by c10d rendezvous on loopback follow the 1-process loss trajectory."
    train(tmp_path / 'one', steps=6, batch_size=8)
    port = free_port()
    script = [str(SCRIPT), '--out', str(tmp_path / 'nodes'), '--steps', '6', '--batch_size', '4']
    nodes = [subprocess.Popen([str(BIN / 'torchrun'), '--nnodes', '2', '--nproc_per_node', '1', '--node_rank', str(rank),
                               '--rdzv_backend', 'c10d', '--rdzv_id', 'minimind-test', '--rdzv_endpoint', f'127.0.0.1:{port}',
                               *script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=REPO)
             for rank in (0, 1)]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), f"a node failed:\n{outs[0][-3000:]}\n{outs[1][-3000:]}"
    a, b = losses(tmp_path / 'one'), losses(tmp_path / 'nodes')
    assert sorted(a) == sorted(b) == list(range(1, 7))
    diff = max(abs(a[s] - b[s]) for s in a)
    assert diff <= 1e-5, f"loss trajectories differ by {diff}"


def test_compiled_moe_training(tmp_path):
    "torch.compile on a mixture-of-experts model: trains, follows the eager loss trajectory, and the trainer adds the MoE loss in both."
    train(tmp_path / 'eager', steps=4, batch_size=4, moe=True)
    train(tmp_path / 'compiled', steps=4, batch_size=4, moe=True, compile=True, timeout=600)
    a, b = losses(tmp_path / 'eager'), losses(tmp_path / 'compiled')
    assert sorted(a) == sorted(b) == list(range(1, 5))
    diff = max(abs(a[s] - b[s]) for s in a)
    assert diff <= 1e-3, f"compiled and eager losses differ by {diff}"
    for run in ('eager', 'compiled'):
        for r in records(tmp_path / run):
            if 'loss' not in r: continue
            assert r['aux'] > 0 and abs(r['loss'] - (r['ce'] + r['aux'])) < 1e-5, (run, r)


def test_deepspeed_adds_moe_loss(tmp_path):
    "The MoE loss is recorded by the trainer's hook under DeepSpeed too (ZeRO-2, 2 processes): logged loss = ce + aux, aux > 0."
    pytest.importorskip('deepspeed')
    train(tmp_path / 'ds', nproc=2, steps=2, batch_size=4, moe=True, deepspeed=2, timeout=400)
    recs = [r for r in records(tmp_path / 'ds') if 'loss' in r]
    assert len(recs) == 2
    for r in recs: assert r['aux'] > 0 and abs(r['loss'] - (r['ce'] + r['aux'])) < 1e-5, r


@pytest.mark.parametrize('stage,offload', [(0, False), (1, False), (3, False), (2, True), (3, True)],
                         ids=['zero0', 'zero1', 'zero3', 'zero2-offload', 'zero3-offload'])
def test_deepspeed_stages_follow_ddp(tmp_path, stage, offload):
    "Every ZeRO stage (and CPU offload) on 2 CPU processes follows plain DDP's loss trajectory and writes a loadable model."
    pytest.importorskip('deepspeed')
    from minimind.model import MiniMindForCausalLM
    train(tmp_path / 'ddp', nproc=2, steps=4, batch_size=4)
    train(tmp_path / 'ds', nproc=2, steps=4, batch_size=4, deepspeed=stage, offload=offload, timeout=400)
    a, b = losses(tmp_path / 'ddp'), losses(tmp_path / 'ds')
    assert sorted(a) == sorted(b) == list(range(1, 5))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4, (a, b)
    model = MiniMindForCausalLM.from_pretrained(tmp_path / 'ds')  # ZeRO-3 gathers its shards before saving
    wa = weights(tmp_path / 'ddp')
    assert max((wa[k] - v).abs().max().item() for k, v in model.state_dict().items() if k in wa) < 1e-3
