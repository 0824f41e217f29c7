"""Backend resolution as torch.compile sees it: run once at trace time and baked into the graph as a constant
(guarded on its inputs), so that the selection, its caches and its warning never become part of a compiled graph.

Imported only from inside a compiled region, where torch._dynamo is loaded anyway.
"""

import torch

from .backends import resolve

resolve_constant = torch.compiler.assume_constant_result(resolve)
