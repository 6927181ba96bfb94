"""tools/gpu_check.sh and tools/gpu_report.py on the CPU: flags and their errors, the dry run's plan, the run on a
machine without CUDA (exit 3 and a report that says so), the notebooks' `#| cuda` cells found and runnable in the
namespace the runner gives them, and the report written from each step's files (a failed step fails the report)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tools' / 'gpu_check.sh'
sys.path.insert(0, str(REPO / 'tools'))
import gpu_report  # noqa: E402


def check(*args, env=None, timeout=300):
    return subprocess.run(['bash', str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=dict(os.environ, PYTHON=sys.executable, **(env or {})))


def test_help_names_every_step_and_flag():
    r = check('--help')
    assert r.returncode == 0, r.stderr
    for word in ('probe', 'cells', 'tests', 'bench', 'report', '--out', '--only', '--skip', '--budget', '--dry-run', 'Exit codes'):
        assert word in r.stdout, word


@pytest.mark.parametrize('args, says', [
    (['--frobnicate'], "unknown flag '--frobnicate'"),
    (['--only', 'probe,bogus'], "--only: unknown step 'bogus'"),
    (['--skip', 'nope'], "--skip: unknown step 'nope'"),
    (['--budget', '10'], '--budget needs whole seconds, at least 60'),
    (['--budget', 'soon'], '--budget needs whole seconds'),
    (['--out'], '--out needs a folder'),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, args, says):
    r = check(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    r = check('--dry-run', '--out', tmp_path / 'o', '--skip', 'cells', '--budget', '300')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [l.split()[0] for l in lines] == ['probe', 'tests', 'bench', 'report'], lines
    assert 'minimind2-small' in r.stdout and 'tests/test_cuda.py' in r.stdout
    assert '(at most 120 s)' in r.stdout
    assert list((tmp_path / 'o').iterdir()) == []                     # nothing ran, nothing written


def test_the_budget_caps_every_step(tmp_path):
    r = check('--dry-run', '--out', tmp_path, '--budget', '100')
    limits = [int(l.split('at most')[1].split()[0]) for l in r.stdout.splitlines() if 'at most' in l]
    assert limits and max(limits) <= 100, r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason='this checks the machine without CUDA')
def test_without_cuda_it_exits_3_with_a_report_that_says_so(tmp_path):
    r = check('--out', tmp_path)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert 'no CUDA device' in r.stdout
    rep = json.loads((tmp_path / 'report.json').read_text())
    assert [s['name'] for s in rep['steps']] == ['probe'] and rep['ok'] is False
    assert rep['probe']['cuda_available'] is False and rep['probe']['torch'] == torch.__version__
    md = (tmp_path / 'report.md').read_text()
    assert 'No CUDA device' in md and 'not run (no CUDA device)' in md


def test_the_notebooks_cuda_cells_are_found_and_resolve_their_names():
    cells = gpu_report.cuda_cells()
    assert any(c['notebook'] == '19_bench.ipynb' and c['module'] == 'bench' for c in cells), cells
    for c in cells:
        missing = gpu_report.unresolved_names(c['source'], gpu_report.cell_namespace(c['module']))
        assert missing == [], f"{c['notebook']} cell {c['index']} uses {missing}, which the runner does not define"


def test_unresolved_names_finds_what_would_raise_nameerror():
    src = 'import math\nx = math.pi\ndef f(a): return a + y\nprint(f(x), undefined_thing)'
    assert gpu_report.unresolved_names(src, {}) == ['undefined_thing', 'y']


def test_a_cell_runs_and_a_failing_cell_is_reported():
    ok = gpu_report.run_cell(dict(notebook='x.ipynb', index=3, module='bench', source="print(peak_flops('cpu'))"))
    assert ok['status'] == 'ok' and ok['output'].strip() == 'None'
    bad = gpu_report.run_cell(dict(notebook='x.ipynb', index=4, module=None, source='1 / 0'))
    assert bad['status'] == 'failed' and 'ZeroDivisionError' in bad['output'] and 'x.ipynb[4]' in bad['output']


def test_the_cells_step_on_the_cpu(tmp_path):
    "The runner itself: the 19_bench cell sees no CUDA here, says so, and counts as run."
    r = subprocess.run([sys.executable, REPO / 'tools' / 'gpu_report.py', 'cells', '--out', tmp_path / 'cells.json'],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / 'cells.json').read_text())
    bench = [c for c in res if c['notebook'] == '19_bench.ipynb']
    assert bench and bench[0]['status'] == 'ok' and 'no CUDA device here' in bench[0]['output']


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" tests="3">
<testcase classname="tests.test_cuda" name="test_a"/><testcase classname="tests.test_cuda" name="test_b"><failure message="boom"/></testcase>
<testcase classname="tests.test_cuda" name="test_c"/></testsuite></testsuites>"""


@pytest.fixture(scope='module')
def cpu_bench(tmp_path_factory):
    "A real (tiny, CPU) minimind_bench report: the file the bench step leaves."
    folder = tmp_path_factory.mktemp('bench')
    from helpers import run
    r = run('minimind.bench:minimind_bench', '--preset', 'tiny', '--steps', '2', '--warmup', '1', '--seq_len', '64',
            '--batch_size', '2', '--gen_tokens', '4', '--gen_batch', '2', '--out', folder / 'bench.json')
    assert r.returncode == 0, r.stderr[-2000:]
    return folder


def fake_gpu_run(folder:Path, bench_folder:Path, failed_step:str=None):
    for name in ('probe', 'cells', 'tests', 'bench'):
        gpu_report.record(folder, name, 1 if name == failed_step else 0, 12.5)
    (folder / 'probe.json').write_text(json.dumps(dict(python='3.12.3', torch='2.11.0', cuda_available=True, cuda='13.0',
                                                       device='NVIDIA H200', capability='9.0', memory_gib=139.8, bf16=True)))
    (folder / 'cuda_cells.json').write_text(json.dumps([dict(notebook='19_bench.ipynb', index=74, status='ok', seconds=80.2,
                                                            output='| config | ours tokens/s |')]))
    (folder / 'cuda_tests.xml').write_text(JUNIT)
    for f in ('bench.json', 'bench.md'): (folder / f).write_text((bench_folder / f).read_text())


def test_report_from_every_steps_files(tmp_path, cpu_bench):
    fake_gpu_run(tmp_path, cpu_bench)
    r = subprocess.run([sys.executable, REPO / 'tools' / 'gpu_report.py', 'report', tmp_path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / 'report.json').read_text())
    assert rep['ok'] and [s['name'] for s in rep['steps']] == ['probe', 'cells', 'tests', 'bench']
    assert rep['tests'] == dict(tests=3, failures=1, errors=0, skipped=0, failed=['tests.test_cuda::test_b'])
    md = (tmp_path / 'report.md').read_text()
    bench = json.loads((cpu_bench / 'bench.json').read_text())
    assert 'NVIDIA H200 (compute capability 9.0' in md and 'Overall: passed' in md
    assert '19_bench.ipynb cell 74: ok in 80.2 s' in md
    assert '3 tests: 2 passed, 1 failed, 0 skipped' in md and 'FAILED tests.test_cuda::test_b' in md
    assert f"ours {bench['ours']['tokens_per_s']:,.0f}, baseline {bench['baseline']['tokens_per_s']:,.0f}" in md
    assert f"{bench['speedup']:.2f}x" in md and 'peak memory: ours' in md
    assert (cpu_bench / 'bench.md').read_text().strip() in md          # the bench's own table, whole


def test_a_failed_step_fails_the_report(tmp_path, cpu_bench):
    fake_gpu_run(tmp_path, cpu_bench, failed_step='bench')
    assert gpu_report.main(['report', str(tmp_path)]) == 1
    md = (tmp_path / 'report.md').read_text()
    assert '| bench | FAILED (exit 1) | 12.5 |' in md and 'Overall: FAILED' in md


def test_a_timed_out_step_is_named_so(tmp_path):
    gpu_report.record(tmp_path, 'cells', 124, 180)
    rep = gpu_report.write_report(tmp_path)
    assert rep['steps'][0]['timed_out'] and '| cells | TIMED OUT | 180.0 |' in (tmp_path / 'report.md').read_text()


def test_report_of_a_missing_folder_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, REPO / 'tools' / 'gpu_report.py', 'report', tmp_path / 'nope'], capture_output=True, text=True)
    assert r.returncode == 2 and 'no such folder' in r.stderr and len(r.stderr.strip().splitlines()) == 1
