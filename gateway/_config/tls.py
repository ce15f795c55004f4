"""Checks of the certificate files a config names, at startup and on reload.

Not pure: it reads the files, so that an unreadable or mismatched certificate or key is a
config error naming the file and the config path, before anything listens or connects.
"""

from __future__ import annotations

import ssl

from .._errors import ConfigProblem
from .load import format_path

TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
"""``min_version`` values and the versions they name."""


def _unreadable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"


def cert_pair_problems(
    file: str,
    cert: str | None,
    key: str | None,
    cert_at: tuple[int | str, ...],
    key_at: tuple[int | str, ...],
) -> list[ConfigProblem]:
    """What is wrong with a certificate and key pair: one set without the other, a file
    that cannot be read, or files that do not load as a PEM certificate and its key."""
    if cert is None and key is None:
        return []
    if cert is None or key is None:
        missing = cert_at if cert is None else key_at
        other = key_at if cert is None else cert_at
        return [ConfigProblem(file, format_path(missing), f"required with {other[-1]}")]
    problems = [
        ConfigProblem(file, format_path(at), message)
        for path, at in ((cert, cert_at), (key, key_at))
        if (message := _unreadable(path)) is not None
    ]
    if problems:
        return problems
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        return [
            ConfigProblem(
                file,
                format_path(cert_at),
                f"{cert} and {key} do not load as a PEM certificate and its key: "
                f"{getattr(exc, 'reason', None) or exc}",
            )
        ]
    return []


def ca_file_problems(file: str, ca_file: str, at: tuple[int | str, ...]) -> list[ConfigProblem]:
    """What is wrong with a file of PEM CA certificates."""
    message = _unreadable(ca_file)
    if message is None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            message = f"{ca_file} does not load as PEM CA certificates: {exc}"
    return [] if message is None else [ConfigProblem(file, format_path(at), message)]
