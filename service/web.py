"""What the two HTTP surfaces, the JSON API (``service.api``) and the operator's console
(``service.console``), share: the node the composition root keeps on the app's state.

This module does not authenticate (each surface has its own credentials) and shapes no response.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.node import Node

__all__ = ["NodeDep", "get_node"]


async def get_node(request: Request) -> Node:
    node = request.app.state.node
    if not isinstance(node, Node):  # pragma: no cover - wiring error
        raise TypeError("app.state.node is not a Node")
    return node


NodeDep = Annotated[Node, Depends(get_node)]
