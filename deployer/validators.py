"""Checks that several backends' option blocks share."""

from __future__ import annotations


def pinned_image(value: str, what: str = "the image") -> str:
    """`value` if it names a container image by release tag or digest; ValueError for an untagged
    or `:latest` image (a moving tag makes two deploys of one spec run different code)."""
    name, _, tag = value.rpartition(":")
    if "@sha256:" not in value and (not name or "/" in tag or tag == "latest"):
        raise ValueError(f"pin {what} to a release tag or digest, not {value!r}")
    return value
