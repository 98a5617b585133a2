"""FastAPI dependencies of the routes: the service's state and bearer-token authentication.

``State`` (``Annotated[ServiceState, Depends(get_state)]``) gives an endpoint the :class:`~.state.ServiceState`
that the app holds in ``app.state.service``. :class:`Access` holds the dependencies that protect reading and
writing endpoints under an auth mode (``--auth``): a :class:`TokenAuth` where a token is needed, nothing where it is
not, so an open endpoint resolves no dependency per request and the OpenAPI document shows the bearer scheme
exactly on the operations that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .state import ServiceState

__all__ = ["Access", "State", "TokenAuth", "get_state"]

# module level: FastAPI resolves the (string) annotations of dependencies in this module's namespace
_BEARER = HTTPBearer(auto_error=False, description="an API token (see reidserve serve --auth)")


def get_state(request: Request) -> ServiceState:
    """The service of the app that received ``request``."""
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]


class TokenAuth:
    """Dependency: the request carries a valid bearer token for a reading (``write=False``) or writing endpoint;
    401 with a ``WWW-Authenticate`` challenge otherwise (see :meth:`ServiceState.authorize`)."""

    def __init__(self, write: bool) -> None:
        self.write = write

    def __call__(self, request: Request, state: State,
                 _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        state.authorize(request, self.write)


@dataclass(frozen=True)
class Access:
    """The route dependencies of reading and writing endpoints under one auth mode."""

    read: list[Any]
    write: list[Any]

    @classmethod
    def for_mode(cls, mode: str) -> Access:
        """``mutating``: a token for writes; ``all``: for every endpoint; ``none``: never."""
        return cls(read=[Depends(TokenAuth(write=False))] if mode == "all" else [],
                   write=[Depends(TokenAuth(write=True))] if mode in ("all", "mutating") else [])
