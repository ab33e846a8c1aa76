"""The allow-list of the safe checkpoint reader: every global a checkpoint may name, and what it builds.

Policy (see also :mod:`segzoo.checkpoints.pickle_vm`):

- allowed: plain containers and scalars; NumPy arrays, scalars and dtypes of numeric, boolean or string type;
  PyTorch tensors, parameters, storage types and dtypes; ``collections.OrderedDict``/``defaultdict``/``Counter``,
  ``argparse.Namespace`` (training scripts save their arguments), and the builtins that pickles use to spell
  sets, tuples, bytes and bytearrays. Each is rebuilt by segzoo code from its arguments.
- refused (strict reads, the default of ``read_checkpoint``): everything else, before anything is built, with
  an error naming every refused global and the file.
- lenient reads (``read_state_dict``, or ``read_checkpoint(..., lenient=True)``): other globals become inert
  :class:`~segzoo.checkpoints.pickle_vm.UnresolvedObject` placeholders (their constructors never run), so the
  weights of an mmengine or timm training checkpoint can be read past its logger, optimizer or config objects.
  Names of code a weights file never needs (``os``, ``posix``, ``subprocess``, ``builtins.eval``...) are
  refused even then.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from segzoo.checkpoints.numpy_types import builtin_globals, numpy_globals
from segzoo.checkpoints.pickle_vm import Global
from segzoo.checkpoints.torch_tensors import torch_globals


@lru_cache(maxsize=1)
def allowed_globals() -> Mapping[str, Global]:
    """Dotted name -> handler, for every global a checkpoint may name (read-only)."""
    table: dict[str, Global] = {}
    for handler in (*builtin_globals(), *numpy_globals(), *torch_globals()):
        if handler.qualname in table:
            raise RuntimeError(f"allow-list names {handler.qualname} twice")
        table[handler.qualname] = handler
    return MappingProxyType(table)
