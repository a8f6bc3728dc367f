"""Run by tests/experiments/test_cli.py in one fresh process: each command line of a JSON list
runs as ``python -m experiments.MODULE ARGS`` would (``runpy.run_module`` as ``__main__``,
``sys.argv`` set), one after the other, and its exit status and stderr are written as JSON.
An exception that escapes is printed as Python prints it (a traceback) with status 1, so
that one process checks what many ``python -m`` runs would, without paying the imports of
JAX and the experiments each time.

  python -m tests.cli_worker CASES_JSON OUT_JSON    # CASES_JSON: [[module, [arg, ...]], ...]
"""

import contextlib
import io
import json
import runpy
import sys
import traceback


def run(module: str, args: list[str]) -> dict:
  """The exit status and stderr of ``python -m experiments.{module} *args``."""
  stderr, status = io.StringIO(), 0
  sys.argv = [module, *args]
  with contextlib.redirect_stderr(stderr):
    try:
      runpy.run_module(f"experiments.{module}", run_name="__main__", alter_sys=True)
    except SystemExit as done:
      status = done.code if isinstance(done.code, int) else (done.code is not None)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()  # what the interpreter prints, then exits with 1
      status = 1
  return {"returncode": status, "stderr": stderr.getvalue()}


def main(cases_json: str, out_json: str) -> None:
  with open(cases_json) as f:
    cases = json.load(f)
  results = [run(module, args) for module, args in cases]
  with open(out_json, "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
