"""Bearer-token authentication for the service.

Tokens come from ``--token-file`` (one per line; blank lines and ``#`` comments ignored) and the
``REIDSERVE_TOKENS`` environment variable (comma- or whitespace-separated). When authentication is on and neither
gives a token, :func:`resolve_tokens` creates one in ``DATA_DIR/token`` (mode 0600), or reuses it, and says so.

``--auth mutating`` (the default) protects the writes (``POST /v1/gallery``, ``DELETE /v1/gallery/{id}``);
``--auth all`` protects every ``/v1`` endpoint and ``/metrics`` (``/healthz``, ``/readyz`` and the OpenAPI
document stay open for probes and tooling); ``--auth none`` turns it off.

A presented token is compared with *every* configured token with :func:`hmac.compare_digest`, without stopping
at the first match, so the time taken does not tell which token (or how much of one) was right.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ReidserveError

__all__ = ["AUTH_MODES", "AuthError", "MIN_TOKEN_LENGTH", "TokenChecker", "TokenError", "load_tokens",
           "resolve_tokens"]

AUTH_MODES = ("mutating", "all", "none")
MIN_TOKEN_LENGTH = 16
ENV_TOKENS = "REIDSERVE_TOKENS"
TOKEN_FILE = "token"
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
HOW_TO_MAKE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenError(ReidserveError):
    """Tokens that cannot be used (malformed, too short, unreadable file)."""


class AuthError(Exception):
    """A request without a valid bearer token; ``reason`` is ``missing``, ``malformed`` or ``invalid``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check(token: str, where: str) -> str:
    if not _TOKEN_RE.fullmatch(token):
        raise TokenError(f"{where}: a token must be printable ASCII without spaces; {HOW_TO_MAKE}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{where}: a token of {len(token)} characters is too easy to guess (at least "
                         f"{MIN_TOKEN_LENGTH}); {HOW_TO_MAKE}")
    return token


def load_tokens(token_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """The tokens of ``token_file`` and of ``$REIDSERVE_TOKENS`` (in ``env``, default ``os.environ``)."""
    env = os.environ if env is None else env
    tokens: list[str] = []
    if token_file is not None:
        p = Path(token_file)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"--token-file {p}: cannot be read ({exc})") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(_check(line, f"{p} line {n}"))
        if not tokens:
            raise TokenError(f"--token-file {p} holds no token (one per line); {HOW_TO_MAKE}")
    for i, tok in enumerate(t for t in re.split(r"[,\s]+", env.get(ENV_TOKENS, "")) if t):
        tokens.append(_check(tok, f"${ENV_TOKENS} token {i + 1}"))
    return list(dict.fromkeys(tokens))


def resolve_tokens(mode: str, token_file: str | Path | None, data_dir: str | Path,
                   env: Mapping[str, str] | None = None) -> tuple[list[str], str | None]:
    """The tokens to accept and, when one was generated or reused from ``DATA_DIR/token``, a note saying so."""
    if mode not in AUTH_MODES:
        raise TokenError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    if mode == "none":
        return [], None
    tokens = load_tokens(token_file, env)
    if tokens:
        return tokens, None
    path = Path(data_dir) / TOKEN_FILE
    if path.is_file():
        return load_tokens(path, {}), (f"using the token in {path} (no --token-file or ${ENV_TOKENS} given); "
                                       f"clients send it as 'Authorization: Bearer <token>'")
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return [token], (f"generated an API token in {path} (mode 0600; no --token-file or ${ENV_TOKENS} given); "
                     f"clients send it as 'Authorization: Bearer <token>', e.g. reidserve query --token-file {path}")


class TokenChecker:
    """Checks ``Authorization`` header values against the configured tokens in constant time."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise TokenError("authentication is on but no token is configured")
        self._tokens = [t.encode("ascii") for t in tokens]

    def check(self, authorization: str | None) -> None:
        """Return if ``authorization`` is ``Bearer <a configured token>``; raise :class:`AuthError` otherwise."""
        if not authorization:
            raise AuthError("missing", "this endpoint needs a token: send 'Authorization: Bearer <token>'")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError("malformed", "the Authorization header must be 'Bearer <token>'")
        try:
            presented = credential.encode("ascii")
        except UnicodeEncodeError:
            raise AuthError("invalid", "the token is not valid") from None
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(presented, token)
        if not ok:
            raise AuthError("invalid", "the token is not valid")
