#!/usr/bin/env python3
"""The Python half of tools/gpu_check.sh: probe the accelerator, run the notebooks' `#| cuda` cells, record each step
and write the one report (report.md and report.json) from what the steps left in the output folder.

    python tools/gpu_report.py probe --out DIR/probe.json
    python tools/gpu_report.py cells --out DIR/cuda_cells.json [--list]
    python tools/gpu_report.py record DIR NAME RC SECONDS [LOG]
    python tools/gpu_report.py report DIR

Only the standard library at import time, so `--help` and `report` work without torch."""
import argparse, ast, builtins, contextlib, io, json, re, sys, time, traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
STEPS_FILE, REPORT_MD, REPORT_JSON = 'steps.jsonl', 'report.md', 'report.json'


# ---------------------------------------------------------------- probe
def probe() -> dict:
    "What this Python and its torch see: versions, the device, its capability, bf16, memory."
    import platform, torch
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda_available=torch.cuda.is_available(),
                cuda=torch.version.cuda)
    if info['cuda_available']:
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability='.'.join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count())
    return info


# ---------------------------------------------------------------- the notebooks' #| cuda cells
def directives(source:str) -> set:
    "The `#| ...` words at the top of a cell (`#| cuda`, `#| slow`, ...)."
    words = set()
    for line in source.splitlines():
        if not line.startswith('#|'): break
        words.update(line[2:].split())
    return words

def cuda_cells(nbs:Path=NBS) -> list:
    "`[{notebook, index, module, source}]`: every code cell flagged `#| cuda`, with its notebook's `default_exp` module."
    found = []
    for nb in sorted(nbs.glob('*.ipynb')):
        cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
        module = next((m.group(1) for c in cells if c['cell_type'] == 'code'
                       for m in [re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)] if m), None)
        for i, c in enumerate(cells):
            src = ''.join(c['source'])
            if c['cell_type'] == 'code' and 'cuda' in directives(src):
                found.append(dict(notebook=nb.name, index=i, module=module, source=src))
    return found

class _Markdown(str):
    "Stands in for IPython's Markdown: the text itself."

def cell_namespace(module) -> dict:
    "What a `#| cuda` cell runs in: torch, its notebook's module (`from minimind.<module> import *`), display and Markdown."
    ns = dict(__name__='__cuda_cell__', Markdown=_Markdown, display=lambda *objs: [print(o) for o in objs])
    exec('import torch', ns)
    if module: exec(f'from minimind.{module} import *', ns)
    return ns

def unresolved_names(source:str, names) -> list:
    "Names `source` reads that neither it assigns, nor `names` holds, nor Python's builtins: what would raise NameError."
    tree = ast.parse(source)
    assigned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): assigned.add(n.name)
        if isinstance(n, ast.arg): assigned.add(n.arg)
        if isinstance(n, (ast.Import, ast.ImportFrom)): assigned.update((a.asname or a.name).split('.')[0] for a in n.names)
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(loaded - assigned - set(names) - set(dir(builtins)))

def run_cell(cell:dict) -> dict:
    "Run one cuda cell; `{notebook, index, status: ok|failed, seconds, output}` (the traceback in the output on failure)."
    out, t0 = io.StringIO(), time.perf_counter()
    try:
        ns = cell_namespace(cell['module'])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(cell['source'], f"{cell['notebook']}[{cell['index']}]", 'exec'), ns)
        status = 'ok'
    except BaseException:
        out.write(traceback.format_exc()); status = 'failed'
    return dict(notebook=cell['notebook'], index=cell['index'], status=status,
                seconds=round(time.perf_counter() - t0, 1), output=out.getvalue()[-20000:])


# ---------------------------------------------------------------- steps and the report
def record(folder:Path, name:str, rc:int, seconds:float, log=None):
    "Append one step's outcome to `folder/steps.jsonl` (the shell script calls this after each step)."
    folder.mkdir(parents=True, exist_ok=True)
    rec = dict(name=name, rc=int(rc), seconds=round(float(seconds), 1), timed_out=int(rc) in (124, 137))
    if log: rec['log'] = Path(log).name
    with open(folder / STEPS_FILE, 'a') as f: f.write(json.dumps(rec) + '\n')

def _read_json(path:Path):
    try: return json.loads(path.read_text())
    except (OSError, ValueError): return None

def _junit(path:Path):
    "`{tests, failures, errors, skipped, failed: [names]}` from pytest's --junitxml file, or None."
    try: root = ET.parse(path).getroot()
    except (OSError, ET.ParseError): return None
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ('tests', 'failures', 'errors', 'skipped')}
    total['failed'] = [f"{case.get('classname', '')}::{case.get('name')}" for case in root.iter('testcase')
                       if case.find('failure') is not None or case.find('error') is not None]
    return total

def _fmt(v, spec:str='{:,.0f}', none:str='-'): return none if v is None else spec.format(v)

def bench_lines(bench:dict) -> list:
    "The headline figures of a minimind_bench JSON report: ours against the MiniMind-style baseline, measured side by side."
    s, ours, base = bench.get('settings', {}), bench.get('ours', {}), bench.get('baseline') or {}
    gen = bench.get('generation') or {}
    batched = max(gen.values(), key=lambda g: g.get('batch_size', 0)) if gen else {}
    return [f"- {s.get('preset')} preset, batch {s.get('batch_size')} x {s.get('seq_len')} tokens, {s.get('device')} "
            f"{s.get('dtype')}, compile {s.get('compile')}, {s.get('steps')} timed steps after {s.get('warmup')} warm-up",
            f"- training tokens/s: ours {_fmt(ours.get('tokens_per_s'))}, baseline {_fmt(base.get('tokens_per_s'))} "
            f"(ours / baseline {_fmt(bench.get('speedup'), '{:.2f}x')}; per epoch of useful tokens {_fmt(bench.get('speedup_epoch'), '{:.2f}x')})",
            f"- MFU: ours {_fmt(ours.get('mfu'), '{:.1%}')}, baseline {_fmt(base.get('mfu'), '{:.1%}')}",
            f"- peak memory: ours {_fmt(ours.get('peak_memory_mb'))} MB, baseline {_fmt(base.get('peak_memory_mb'))} MB "
            f"({ours.get('memory_kind', '?')})",
            f"- generation: {_fmt(gen.get('1', {}).get('tokens_per_s'))} tokens/s at batch 1, "
            f"{_fmt(batched.get('tokens_per_s'))} at batch {batched.get('batch_size', '-')}"]

def build_report(folder:Path) -> dict:
    "Gather every step's files in `folder` into one record: steps, probe, cuda cells, CUDA tests, bench; `ok` when all passed."
    steps = [json.loads(l) for l in (folder / STEPS_FILE).read_text().splitlines() if l.strip()] if (folder / STEPS_FILE).exists() else []
    rep = dict(steps=steps, probe=_read_json(folder / 'probe.json'), cells=_read_json(folder / 'cuda_cells.json'),
               tests=_junit(folder / 'cuda_tests.xml'), bench=_read_json(folder / 'bench.json'),
               bench_table=(folder / 'bench.md').read_text() if (folder / 'bench.md').exists() else None)
    rep['ok'] = bool(steps) and all(s['rc'] == 0 for s in steps) and bool((rep['probe'] or {}).get('cuda_available'))
    return rep

def report_markdown(rep:dict) -> str:
    p = rep['probe'] or {}
    lines = ['# tools/gpu_check.sh report', '']
    if p.get('cuda_available'):
        lines.append(f"{p['device']} (compute capability {p['capability']}, {p['memory_gib']} GiB, bf16 {p['bf16']}), "
                     f"torch {p['torch']} with CUDA {p['cuda']}, Python {p['python']}.")
    elif p: lines.append(f"No CUDA device: torch {p.get('torch')} on Python {p.get('python')} sees none. The GPU steps did not run.")
    else: lines.append('The probe wrote nothing.')
    lines += ['', '| step | result | seconds |', '|---|---|---:|']
    for s in rep['steps']:
        result = 'ok' if s['rc'] == 0 else ('TIMED OUT' if s['timed_out'] else f"FAILED (exit {s['rc']})")
        lines.append(f"| {s['name']} | {result} | {s['seconds']:.1f} |")
    lines.append(f"\nOverall: {'passed' if rep['ok'] else 'FAILED' if p.get('cuda_available') else 'not run (no CUDA device)'}.")
    if rep['cells']:
        lines += ['', '## `#| cuda` notebook cells', '']
        for c in rep['cells']:
            lines += [f"- {c['notebook']} cell {c['index']}: {c['status']} in {c['seconds']:.1f} s", '', '```',
                      c['output'].strip()[-4000:] or '(no output)', '```', '']
    t = rep['tests']
    if t:
        lines += ['', '## CUDA tests', '', f"{t['tests']} tests: {t['tests'] - t['failures'] - t['errors'] - t['skipped']} passed, "
                  f"{t['failures'] + t['errors']} failed, {t['skipped']} skipped."]
        lines += [f"- FAILED {name}" for name in t['failed']]
    if rep['bench']:
        lines += ['', '## minimind_bench (ours and the MiniMind-style baseline, side by side in one run)', ''] + bench_lines(rep['bench'])
        if rep.get('bench_table'): lines += ['', rep['bench_table'].strip()]
    return '\n'.join(lines) + '\n'

def write_report(folder:Path) -> dict:
    rep = build_report(folder)
    (folder / REPORT_JSON).write_text(json.dumps(rep, indent=1) + '\n')
    (folder / REPORT_MD).write_text(report_markdown(rep))
    return rep


# ---------------------------------------------------------------- command line
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gpu_report.py', description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    a = sub.add_parser('probe', help='write what torch sees (versions, device, bf16, memory) as JSON')
    a.add_argument('--out', type=Path, required=True)
    a = sub.add_parser('cells', help="run every notebook's #| cuda cells; exit 1 if one fails")
    a.add_argument('--out', type=Path, required=True)
    a.add_argument('--list', action='store_true', help='only list the cells, run nothing')
    a = sub.add_parser('record', help="append one step's outcome to DIR/steps.jsonl")
    a.add_argument('dir', type=Path); a.add_argument('name'); a.add_argument('rc', type=int); a.add_argument('seconds', type=float)
    a.add_argument('log', nargs='?')
    a = sub.add_parser('report', help='write DIR/report.md and DIR/report.json from the files the steps left; exit 1 unless every step passed')
    a.add_argument('dir', type=Path)
    args = ap.parse_args(argv)
    if args.cmd == 'probe':
        info = probe(); args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=1) + '\n')
        print(f"probe: torch {info['torch']}, " + (f"{info['device']}, bf16 {info['bf16']}" if info['cuda_available'] else 'no CUDA device'))
        return 0
    if args.cmd == 'cells':
        cells = cuda_cells()
        if args.list:
            for c in cells: print(f"{c['notebook']} cell {c['index']} (module {c['module']})")
            return 0
        results = []
        for c in cells:
            results.append(run_cell(c))
            print(f"{c['notebook']} cell {c['index']}: {results[-1]['status']} in {results[-1]['seconds']} s", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + '\n')   # after each cell: a timeout keeps what ran
        return 0 if all(r['status'] == 'ok' for r in results) else 1
    if args.cmd == 'record':
        record(args.dir, args.name, args.rc, args.seconds, args.log); return 0
    if args.cmd == 'report':
        if not args.dir.is_dir(): print(f"gpu_report.py: {args.dir}: no such folder", file=sys.stderr); return 2
        rep = write_report(args.dir)
        print(f"report: {args.dir / REPORT_MD} ({'passed' if rep['ok'] else 'FAILED'})")
        return 0 if rep['ok'] else 1
    return 2


if __name__ == '__main__':
    sys.exit(main())
