"""Internal value transfers from call traces, for both trace flavours nodes offer.

* ``debug_traceBlockByNumber`` with ``{"tracer": "callTracer"}`` (geth, anvil, Reth, Erigon):
  one call tree per transaction.
* ``trace_block`` (Erigon, Nethermind, Reth, anvil; OpenEthereum style): a flat list of traces
  with a ``traceAddress`` each, already in depth-first order.

Both give the same numbering: the *k*-th call of a transaction in a depth-first walk of its call
tree (the transaction itself is call 0) has position :data:`TRACE_POSITION_BASE` + *k*, so a
transfer's id does not depend on the trace flavour. Calls that reverted (and every call below
them) moved nothing and are left out; so are calls without value and the transaction itself,
whose value the block's transaction list already reports.

>>> tree = {"type": "CALL", "from": "0xa", "to": "0xb", "value": "0x0", "calls": [
...     {"type": "CALL", "from": "0xb", "to": "0xc", "value": "0x5"},
...     {"type": "CALL", "from": "0xb", "to": "0xd", "value": "0x7", "error": "execution reverted"},
...     {"type": "DELEGATECALL", "from": "0xb", "to": "0xe", "value": "0x9"}]}
>>> walk_call_tree(tree)
[InternalTransfer(call=1, sender='0xb', recipient='0xc', value=5)]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple

from drainwatch.events import normalize_address

__all__ = ["TRACE_POSITION_BASE", "InternalTransfer", "walk_call_tree", "walk_parity_traces"]

TRACE_POSITION_BASE: Final = 10_000

# Only these move value; DELEGATECALL and STATICCALL report the caller's value but move none.
_VALUE_CALLS: Final = frozenset({"CALL", "CREATE", "CREATE2", "SELFDESTRUCT"})


class InternalTransfer(NamedTuple):
    """Value moved by call ``index`` (depth-first, the transaction itself is 0)."""

    call: int
    sender: str
    recipient: str
    value: int


def _int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return int(str(value), 16) if str(value)[:2] in ("0x", "0X") else int(str(value))


def walk_call_tree(root: Mapping[str, Any]) -> list[InternalTransfer]:
    """Internal transfers in one transaction's ``callTracer`` tree (none if it reverted)."""
    if root.get("error"):
        return []
    out: list[InternalTransfer] = []
    counter = 0

    def visit(frame: Mapping[str, Any]) -> None:
        nonlocal counter
        index = counter
        counter += 1
        failed = bool(frame.get("error"))
        kind = str(frame.get("type", "")).upper()
        value = _int(frame.get("value"))
        if index and not failed and kind in _VALUE_CALLS and value > 0 and frame.get("to"):
            out.append(
                InternalTransfer(
                    index,
                    normalize_address(str(frame["from"])),
                    normalize_address(str(frame["to"])),
                    value,
                )
            )
        for child in frame.get("calls") or ():
            if failed:
                _skip(child)
            else:
                visit(child)

    def _skip(frame: Mapping[str, Any]) -> None:
        # A reverted subtree still takes its numbers, so later calls keep their positions.
        nonlocal counter
        counter += 1
        for child in frame.get("calls") or ():
            _skip(child)

    visit(root)
    return out


def walk_parity_traces(traces: Sequence[Mapping[str, Any]]) -> dict[str, list[InternalTransfer]]:
    """Internal transfers per transaction hash from ``trace_block`` output.

    >>> traces = [
    ...   {"transactionHash": "0x1", "traceAddress": [], "type": "call",
    ...    "action": {"from": "0xa", "to": "0xb", "value": "0x0", "callType": "call"}},
    ...   {"transactionHash": "0x1", "traceAddress": [0], "type": "call",
    ...    "action": {"from": "0xb", "to": "0xc", "value": "0x5", "callType": "call"}}]
    >>> walk_parity_traces(traces)
    {'0x1': [InternalTransfer(call=1, sender='0xb', recipient='0xc', value=5)]}
    """
    out: dict[str, list[InternalTransfer]] = {}
    for tx_hash, items in _by_tx(traces):
        failed: list[tuple[int, ...]] = []
        found: list[InternalTransfer] = []
        for index, trace in enumerate(sorted(items, key=lambda t: tuple(t["traceAddress"]))):
            address = tuple(trace["traceAddress"])
            if trace.get("error"):
                failed.append(address)
            if any(address[: len(f)] == f for f in failed):
                continue
            action = trace.get("action") or {}
            kind = str(trace.get("type", ""))
            if kind == "call" and action.get("callType", "call") == "call":
                sender, recipient, value = action.get("from"), action.get("to"), action.get("value")
            elif kind == "create":
                sender, value = action.get("from"), action.get("value")
                recipient = (trace.get("result") or {}).get("address")
            elif kind == "suicide":
                sender, recipient = action.get("address"), action.get("refundAddress")
                value = action.get("balance")
            else:
                continue
            amount = _int(value)
            if index and amount > 0 and sender and recipient:
                found.append(
                    InternalTransfer(
                        index,
                        normalize_address(str(sender)),
                        normalize_address(str(recipient)),
                        amount,
                    )
                )
        if failed and () in failed:
            found = []
        out[normalize_address(tx_hash)] = found
    return out


def _by_tx(
    traces: Sequence[Mapping[str, Any]],
) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for trace in traces:
        tx_hash = trace.get("transactionHash")
        if tx_hash:  # block rewards have none
            groups.setdefault(str(tx_hash), []).append(trace)
    yield from groups.items()
