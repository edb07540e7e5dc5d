"""`hakmem-forensics probe audit` and `hakmem-forensics probe ADDR... --trace T --event N`.

Registered in the app as a sub-command group: ``app.add_typer(probe.app, name="probe")``.
A first argument that is not a sub-command name starts `probe addr`, so
`probe 0x7ffff6afffe0 --trace t.htb --event 44` and `probe --trace t.htb --event 44` work as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from forensics import probeaudit
from forensics.cli.common import write_json
from forensics.errors import EXIT_BAD_INPUT, BadInputError
from forensics.inspect import MAX_ADDRS, inspect_event
from forensics.replay import ReplayConfig
from forensics.report import probe as probe_report
from forensics.theme import make_console

EPILOG = (
    f"Exit status: 0 analysis completed; 2 usage error; {EXIT_BAD_INPUT} bad input (a missing trace, an event past "
    "the end or past a crash, a bad address or library); 4 internal error."
)


class _AddrDefaultGroup(TyperGroup):
    """A group whose first argument, when it names no sub-command (an address, or an option
    such as --trace), starts the `addr` command."""

    def parse_args(self, ctx, args):  # type: ignore[override]
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["addr", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="probe",
    cls=_AddrDefaultGroup,
    help="Readability probes: `probe audit` judges every probe on a test bed; `probe [ADDR...] --trace T --event N` (= `probe addr`) gives every probe's verdict on live addresses of a replay stopped before event N.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command("audit", epilog=EPILOG)
def audit(
    calls: Annotated[int, typer.Option("--calls", min=0, metavar="N", help="Calls per timing batch (0: no timing).")] = probeaudit.DEFAULT_CALLS,
    batches: Annotated[int, typer.Option("--batches", min=1, metavar="B", help="Timing batches per probe and bed row; the cost is their median.")] = probeaudit.DEFAULT_BATCHES,
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator for the SuperSlab and Mid rows (default: $HAKMEM_LIB, else the bundled hakmem-ref).")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the audit as JSON (schema {probe_report.AUDIT_SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Call every readability probe on a test bed it builds, judged by /proc/self/maps.

    The bed: read-write, unmapped, PROT_NONE and read-only pages at page-aligned and unaligned
    addresses (+8, +page-1), 32-byte headers straddling mapped/unmapped and mapped/PROT_NONE
    boundaries, the header below a fresh SuperSlab's first block (in the unmapped hole, and in a
    PROT_NONE guard page), and a live Mid block's header. It prints the verdict matrix, each
    probe's false "readable" verdicts (the header read that follows crashes) and false
    "unreadable" ones (good frees go to a fallback: misrouted), and the cost per call in ns and
    TSC cycles. Everything runs in an isolated child.
    """
    result = probeaudit.run_audit(calls=calls, batches=batches, lib=str(lib) if lib else None)
    if json_out is not None:
        write_json(probe_report.audit_to_json(result), json_out)
        if json_out == "-":
            return
    probe_report.render_audit(result, make_console())


def _parse_addr(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise BadInputError(f"{text!r} is not an address (write 0x7ffff6afffe0 or a decimal number)") from None
    if not 0 <= value < 1 << 64:
        raise BadInputError(f"{text!r} is not a 64-bit address")
    return value


@app.command("addr", epilog=EPILOG)
def addr(
    addresses: Annotated[Optional[list[str]], typer.Argument(metavar="ADDR...", help="Addresses (0x... or decimal), at most 64; may be none: the event's own header is always probed.", show_default=False)] = None,
    trace: Annotated[Path, typer.Option("--trace", metavar="TRACE", help="The trace whose replay to stop (text or binary).")] = ...,  # type: ignore[assignment]
    event: Annotated[int, typer.Option("--event", min=0, metavar="N", help="Stop just before event N (events 0..N-1 replayed).")] = ...,  # type: ignore[assignment]
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator library (default: $HAKMEM_LIB, else the bundled hakmem-ref).")] = None,
    probe: Annotated[Optional[str], typer.Option("--probe", metavar="KIND", help="HAKMEM_HEADER_PROBE for the replay up to N (default: the trace's knob). Does not change the verdicts shown: every probe is asked.")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", metavar="NAME=VALUE", help="Any other HAKMEM_* knob for the replay; repeatable.")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {probe_report.ADDR_SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Every probe's verdict, and the owner, for live addresses of a replay stopped before event N.

    The replay (hfreplay --stop-before N) runs serially with ASLR off, so addresses seen in a
    serial `replay` of the same trace are the addresses here. When event N frees a pointer,
    its header (ptr - HEADER_SIZE, 32 bytes) is probed too; each address given is probed for
    1 byte.
    """
    values = [_parse_addr(a) for a in addresses or []]
    if len(values) > MAX_ADDRS:
        raise BadInputError(f"at most {MAX_ADDRS} addresses, got {len(values)}")
    knobs: dict[str, str] = {}
    for item in knob or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BadInputError(f"--knob {item!r}: expected NAME=VALUE")
        knobs[name] = value
    if probe is not None and probe not in probeaudit.PROBES:
        raise BadInputError(f"--probe {probe!r}: expected one of {', '.join(probeaudit.PROBES)}")
    config = ReplayConfig(lib=str(lib) if lib else None, probe=probe, knobs=knobs)
    insp = inspect_event(trace, event, values, config)
    if json_out is not None:
        write_json(probe_report.inspection_to_json(insp), json_out)
        if json_out == "-":
            return
    probe_report.render_inspection(insp, make_console())
