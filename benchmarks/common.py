"""What every benchmark script does at its ends: name the command, save the JSON."""

import json
import sys


def command(module: str, argv) -> str:
  """The command line that produced a result: ``python -m MODULE ARGS`` when run as a
  script (``argv`` None), else ``main([...])`` as a test or notebook called it."""
  return " ".join([f"python -m {module}", *sys.argv[1:]] if argv is None
                  else ["main", repr(argv)])


def save(path: str | None, result, **json_kwargs) -> None:
  """Writes ``result`` as indented JSON to ``path``; nothing when ``path`` is None."""
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=1, **json_kwargs)
