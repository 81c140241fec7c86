"""The exceptions the CLI turns into messages and exit codes.

Exit codes: 0 done, 1 the operation failed (`DeployerError`, `ProviderError`),
2 bad input (`InputError`, `MissingCredentialsError`). Nothing else reaches the user as a traceback.
"""

from __future__ import annotations


class DeployerError(Exception):
    """An operation failed. `hint` says what the user can do next."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InputError(DeployerError):
    """The user's input (spec file, flag, name) is wrong. Exit code 2."""

    exit_code = 2


class MissingCredentialsError(InputError):
    """No credentials are configured for `provider`: none set, or only empty ones (`blank` names
    the variables set but empty). Exit code 2 like any bad input: the user's setup must change,
    and no provider was called."""

    def __init__(self, provider: str, what: str, *, blank: list[str], hint: str) -> None:
        detail = f" ({' and '.join(blank)} set but empty)" if blank else ""
        super().__init__(f"{provider}: no {what}{detail}", hint=hint)
        self.provider = provider


class ProviderError(DeployerError):
    """A provider refused or failed a call; the message is in the provider's terms.

    `status` is the HTTP status (or None), `code` the provider's error code when it has one.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}", hint=hint)
        self.provider = provider
        self.status = status
        self.code = code


class NotReadyError(DeployerError):
    """The endpoint did not answer in time, or what serves it died while we waited."""


class LockedError(DeployerError):
    """Another process holds the deployment's lock."""
