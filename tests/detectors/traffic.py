"""The traffic generator now lives in the package (``drainwatch evaluate`` uses it)."""

from detectors.traffic import (
    INCIDENT_PATH,
    CoincheckScenario,
    DrainSpec,
    HotWalletSpec,
    Traffic,
    coincheck_incident,
    coincheck_scenario,
    config_toml,
    generate_traffic,
    write_jsonl,
)

__all__ = [
    "INCIDENT_PATH",
    "CoincheckScenario",
    "DrainSpec",
    "HotWalletSpec",
    "Traffic",
    "coincheck_incident",
    "coincheck_scenario",
    "config_toml",
    "generate_traffic",
    "write_jsonl",
]
