"""Run, for each notebook, only the cells nbdev's docs processor runs (imports, exports, show_doc) from the repo root,
and list every cell that fails there, not just the first: such a cell mixes an import with code that needs a
variable from a skipped cell, or uses a path relative to nbs/. Usage: python tools/check_doc_cells.py [nbs/NN_*.ipynb ...]"""
import sys, warnings
from pathlib import Path
from execnb.shell import CaptureShell
from nbdev.process import NBProcessor
from nbdev.processors import _do_eval

def failing_cells(path):
    "Indices and errors of the cells of `path` that fail when nbdev's docs processor runs them."
    shell = CaptureShell()
    shell.run_cell('from nbdev.showdoc import show_doc')
    proc = NBProcessor(path, procs=[])
    bad = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for cell in proc.nb.cells:
            if not _do_eval(cell): continue
            shell.cell(cell)
            if shell.exc:
                bad.append((cell.idx_, f"{type(shell.exc).__name__}: {shell.exc}", cell.source.split('\n')[0]))
                shell.exc = None
    return bad

if __name__ == '__main__':
    root = Path(__file__).resolve().parents[1]
    paths = [Path(p) for p in sys.argv[1:]] or sorted((root / 'nbs').glob('[0-9]*.ipynb'))
    n = 0
    for p in paths:
        for idx, err, first in failing_cells(p.resolve()):
            print(f"{p}: cell {idx}: {err}  [{first[:60]}]"); n += 1
    sys.exit(1 if n else 0)
