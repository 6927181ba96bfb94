"""Run a package console script before it is installed: `python cli.py minimind.pretrain:minimind_pretrain --flags...`.

Works under torchrun and the deepspeed launcher too (they run a script file, and pass its arguments through)."""
import importlib, sys

if __name__ == '__main__':
    # the first argument that is not a flag names the function (the deepspeed launcher puts --local_rank=N before it)
    at = next(i for i, a in enumerate(sys.argv[1:], 1) if not a.startswith('-'))
    module, func = sys.argv.pop(at).split(':')
    sys.argv[0] = func  # as the installed script is named: `@cli` functions parse the command line only under their own name
    getattr(importlib.import_module(module), func)()
