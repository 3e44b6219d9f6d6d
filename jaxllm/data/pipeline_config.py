"""Settings of the cleaning, quality-filter, dedup and PII stages (a section of DataConfig: --data.clean.*)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CleanConfig:
    enabled: bool = True
