"The course chain end to end, shrunk (`--scale`): two runs agree number for number, `--check` fails on a number that moved, and a course stage stopped midway resumes to the weights of an uninterrupted run."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import run, REPO

QUICK = ('--scale', '0.005', '--limit', '4', '--eval-limit', '2', '--no-progress')


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
    "One shrunk course run: its results file and the cache it trained in."
    d = tmp_path_factory.mktemp('course')
    r = run('minimind.course:minimind_course', *QUICK, '--root', d / 'root', '--out', d / 'a.json', cache=d / 'cache',
            env=dict(MINIMIND_THREADS='1'), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, json.loads((d / 'a.json').read_text())


def test_the_course_run_writes_every_stage_its_measures_and_the_eval_table(first_run):
    d, res = first_run
    assert list(res['stages']) == ['pretrain', 'sft', 'lora', 'dpo', 'distill', 'reason', 'grpo']
    assert (res['threads'], res['scale'], res['torch']) == (1, 0.005, torch.__version__.split('+')[0])
    assert res['cpu'].startswith(torch.backends.cpu.get_cpu_capability() + '-')   # the CPU kind, for --check
    for name, st in res['stages'].items():
        m = st['metrics'][st['primary']]
        assert {'before', 'after', 'delta', 'se', 'n', 'beyond_noise', 'label'} <= set(m), name
        assert m['n'] >= 2 and st['recipe']['threads'] == 1 and st['recipe']['scale'] == 0.005
    assert len(res['eval']) == 9 and all('tasks' in r for r in res['eval'].values())
    assert set(res['timing']) >= set(res['stages']) | {'eval', 'total'}
    assert (d / 'a.png').stat().st_size > 10_000                        # the plot beside the results


def test_two_course_runs_agree_and_check_names_a_number_that_moved(first_run, tmp_path):
    d, res = first_run
    # a second run, with a course cache of its own (the token caches shared), checked against the first: every number the same
    r = run('minimind.course:minimind_course', *QUICK, '--root', tmp_path / 'root', '--out', tmp_path / 'b.json',
            '--check', d / 'a.json', cache=d / 'cache', env=dict(MINIMIND_THREADS='1'), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'reproduced' in r.stdout
    # the same run, cached now, against a reference whose SFT number was moved: exit 1, the number named
    moved = json.loads((d / 'a.json').read_text())
    moved['stages']['sft']['metrics']['format']['after'] += 0.25
    (tmp_path / 'moved.json').write_text(json.dumps(moved))
    r = run('minimind.course:minimind_course', *QUICK, '--root', tmp_path / 'root', '--out', tmp_path / 'c.json',
            '--check', tmp_path / 'moved.json', cache=d / 'cache', env=dict(MINIMIND_THREADS='1'), timeout=1200)
    assert r.returncode == 1 and 'stages.sft.metrics.format.after' in r.stderr, r.stderr[-2000:]
    # the moved reference, as if written on another CPU kind: its numbers are not compared (rounding differs), unless a
    # tolerance asks for it; then the moved number is named again
    moved['cpu'] = 'AVX2-0123456789'
    (tmp_path / 'elsewhere.json').write_text(json.dumps(moved))
    r = run('minimind.course:minimind_course', *QUICK, '--root', tmp_path / 'root', '--out', tmp_path / 'd.json',
            '--check', tmp_path / 'elsewhere.json', cache=d / 'cache', env=dict(MINIMIND_THREADS='1'), timeout=1200)
    assert r.returncode == 0 and 'the numbers are not compared' in r.stdout and 'AVX2-0123456789' in r.stdout, r.stdout[-2000:]
    r = run('minimind.course:minimind_course', *QUICK, '--root', tmp_path / 'root', '--out', tmp_path / 'e.json',
            '--check', tmp_path / 'elsewhere.json', '--tolerance', '0.1', cache=d / 'cache', env=dict(MINIMIND_THREADS='1'), timeout=1200)
    assert r.returncode == 1 and 'stages.sft.metrics.format.after' in r.stderr, r.stderr[-2000:]


def test_bad_flags_are_one_line_and_exit_2(tmp_path):
    (tmp_path / 'x.json').write_text('{"not": "results"}')
    for args, flag in ((('--scale', '0'), '--scale 0'), (('--check', tmp_path / 'x.json'), '--check'),
                       (('--check', tmp_path / 'nope.json'), '--check'), (('--eval-limit', '-1'), '--eval-limit -1'),
                       (('--out', tmp_path), '--out')):
        r = run('minimind.course:minimind_course', *args, '--root', tmp_path / 'root', cache=tmp_path / 'cache')
        assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / 'root').exists()                              # checked before any work


STAGE = """
import sys
from minimind.stage import course_settings
from minimind.pretrain import course_pretrained
with course_settings(scale=0.05, progress=False): print(course_pretrained(sys.argv[1]), flush=True)
"""

def _pretrain(root, cache, **popen):
    env = dict(os.environ, MINIMIND_CACHE=str(cache), MINIMIND_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, '-c', STAGE, str(root)], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_a_course_stage_stopped_midway_resumes_to_the_uninterrupted_weights(tmp_path):
    cache = tmp_path / 'cache'
    whole = _pretrain(tmp_path / 'whole', cache); out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-2000:]
    # the same stage in another cache folder, stopped (SIGTERM, as a kernel's or a scheduler's stop) after its first checkpoint
    stopped = _pretrain(tmp_path / 'stopped', cache)
    first = tmp_path / 'stopped' / 'pretrain' / 'step-0000010'
    for _ in range(1200):
        if (first / 'trainer_state.pt').exists() or stopped.poll() is not None: break
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM); _, err = stopped.communicate(timeout=300)
    assert stopped.returncode != 0 and 'stopped before its last step' in err, err[-2000:]
    folder = tmp_path / 'stopped' / 'pretrain'
    assert not (folder / 'course_run.json').exists()                     # not taken as done...
    assert any(folder.glob('step-*'))                                    # ...and its checkpoints kept
    again = _pretrain(tmp_path / "stopped", cache); out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert "resuming the stopped run" in out                             # it continued from the checkpoint
    a, b = load_file(str(tmp_path / 'whole' / 'pretrain' / 'model.safetensors')), load_file(str(folder / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
