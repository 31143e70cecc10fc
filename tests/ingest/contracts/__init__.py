"""Hand-assembled test contracts (no Solidity compiler here): a minimal ERC-20 and a forwarder.

Each program is a list of opcodes, pushes and labels; :func:`assemble` resolves the labels. The
comments say what each step leaves on the stack (top first).
"""

from __future__ import annotations

from typing import Final

TRANSFER_TOPIC: Final = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

OPS: Final = {
    "STOP": 0x00, "ADD": 0x01, "SUB": 0x03, "LT": 0x10, "EQ": 0x14, "ISZERO": 0x15,
    "SHR": 0x1C, "CALLER": 0x33, "CALLDATALOAD": 0x35, "CALLDATASIZE": 0x36, "CODECOPY": 0x39,
    "MSTORE": 0x52, "SLOAD": 0x54, "SSTORE": 0x55, "JUMPI": 0x57, "GAS": 0x5A,
    "JUMPDEST": 0x5B, "DUP1": 0x80, "DUP2": 0x81, "DUP3": 0x82, "SWAP1": 0x90, "LOG3": 0xA3,
    "CALL": 0xF1, "RETURN": 0xF3, "REVERT": 0xFD,
}  # fmt: skip

Item = str | tuple[str, int | str, int]


def push(value: int | str, width: int = 1) -> tuple[str, int | str, int]:
    """PUSHn of a number, or of a label's offset (``"@name"``, two bytes)."""
    return ("PUSH", value, 2 if isinstance(value, str) else width)


def assemble(program: list[Item]) -> bytes:
    """Bytecode of ``program``: opcodes, ``push(...)`` items and ``"name:"`` labels."""
    labels: dict[str, int] = {}
    offset = 0
    for item in program:
        if isinstance(item, str) and item.endswith(":"):
            labels[item[:-1]] = offset  # the label is a JUMPDEST byte at this offset
            offset += 1
        else:
            offset += 1 + (item[2] if isinstance(item, tuple) else 0)
    code = bytearray()
    for item in program:
        if isinstance(item, tuple):
            _, value, width = item
            number = labels[value[1:]] if isinstance(value, str) else value
            code += bytes([0x5F + width]) + number.to_bytes(width, "big")
        elif item.endswith(":"):
            code.append(OPS["JUMPDEST"])
        else:
            code.append(OPS[item])
    return bytes(code)


def deployable(runtime: bytes, constructor: list[Item] | None = None) -> str:
    """Init code: run ``constructor``, then copy ``runtime`` to memory and return it."""
    head = list(constructor or [])
    tail_len = len(assemble([*head, push(0, 2), "DUP1", push(0, 2), push(0), "CODECOPY",
                             push(0), "RETURN"]))  # fmt: skip
    init = assemble([
        *head,
        push(len(runtime), 2), "DUP1",   # [len, len]
        push(tail_len, 2), push(0),       # [0, codeOffset, len, len]
        "CODECOPY",                       # memory[0:len] = runtime; [len]
        push(0), "RETURN",                # return memory[0:len]
    ])  # fmt: skip
    return "0x" + (init + runtime).hex()


def _return_word() -> list[Item]:
    # memory[0:32] holds the answer: [] -> return it
    return [push(0x20), push(0), "RETURN"]


# A minimal ERC-20: balances live at storage slot = holder address; the deployer gets the supply.
# transfer(to, amount) emits the standard Transfer(from, to, amount) log; no allowances.
TOKEN_RUNTIME: Final = assemble([
    push(0), "CALLDATALOAD", push(0xE0), "SHR",              # [selector]
    "DUP1", push(0xA9059CBB, 4), "EQ", push("@transfer"), "JUMPI",
    "DUP1", push(0x70A08231, 4), "EQ", push("@balanceOf"), "JUMPI",
    "DUP1", push(0x95D89B41, 4), "EQ", push("@symbol"), "JUMPI",
    "DUP1", push(0x313CE567, 4), "EQ", push("@decimals"), "JUMPI",
    "fail:", push(0), "DUP1", "REVERT",                       # unknown selector or too poor
    "transfer:",
    push(0x24), "CALLDATALOAD",                               # [amt]
    "CALLER", "SLOAD",                                        # [bal, amt]
    "DUP2", "DUP2", "LT", push("@fail"), "JUMPI",             # revert if bal < amt
    "DUP2", "SWAP1", "SUB",                                   # [bal - amt, amt]
    "CALLER", "SSTORE",                                       # balance[caller] = bal - amt; [amt]
    push(0x04), "CALLDATALOAD",                               # [to, amt]
    "DUP1", "SLOAD", "DUP3", "ADD",                           # [balTo + amt, to, amt]
    "SWAP1", "SSTORE",                                        # balance[to] += amt; [amt]
    push(0), "MSTORE",                                        # memory[0:32] = amt; []
    push(0x04), "CALLDATALOAD", "CALLER",                     # [from, to]
    push(int(TRANSFER_TOPIC, 16), 32),                        # [topic0, from, to]
    push(0x20), push(0),                                      # [0, 32, topic0, from, to]
    "LOG3",                                                   # Transfer(from, to) data=amt
    push(1), push(0), "MSTORE", *_return_word(),              # return true
    "balanceOf:",
    push(0x04), "CALLDATALOAD", "SLOAD", push(0), "MSTORE", *_return_word(),
    "symbol:",                                                # ABI string "TKN"
    push(0x20), push(0), "MSTORE",                            # offset of the string
    push(3), push(0x20), "MSTORE",                            # its length
    push(int(b"TKN".hex().ljust(64, "0"), 16), 32), push(0x40), "MSTORE",
    push(0x60), push(0), "RETURN",
    "decimals:",
    push(6), push(0), "MSTORE", *_return_word(),
])  # fmt: skip

TOKEN_SUPPLY: Final = 10**30
TOKEN_INIT: Final = deployable(
    TOKEN_RUNTIME,
    [push(TOKEN_SUPPLY, 32), "CALLER", "SSTORE"],  # balance[deployer] = supply
)

# A "smart wallet" that pays out on behalf of whoever calls it (as a multisig does once its
# owners signed): calldata = 32-byte recipient, 32-byte amount. Empty calldata: accept a deposit.
FORWARDER_RUNTIME: Final = assemble([
    "CALLDATASIZE", "ISZERO", push("@done"), "JUMPI",
    push(0), push(0), push(0), push(0),                       # retSize retOff argSize argOff
    push(0x20), "CALLDATALOAD",                               # [value, ...]
    push(0), "CALLDATALOAD",                                  # [to, value, ...]
    "GAS", "CALL",                                            # [success]
    "ISZERO", push("@failed"), "JUMPI",
    "done:", "STOP",
    "failed:", push(0), "DUP1", "REVERT",
])  # fmt: skip
FORWARDER_INIT: Final = deployable(FORWARDER_RUNTIME)


def transfer_calldata(to: str, amount: int) -> str:
    """ERC-20 ``transfer(to, amount)`` calldata."""
    return "0xa9059cbb" + to[2:].lower().rjust(64, "0") + f"{amount:064x}"


def forward_calldata(to: str, amount: int) -> str:
    """Calldata that makes the forwarder pay ``amount`` wei to ``to``."""
    return "0x" + to[2:].lower().rjust(64, "0") + f"{amount:064x}"
