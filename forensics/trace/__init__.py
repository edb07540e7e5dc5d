"""Allocation traces: the text and binary formats of docs/trace-format.md, checks, conversion, generators."""

from forensics.trace.binary import BinaryTraceReader, BinaryTraceWriter
from forensics.trace.generators import Workload, larson, random_mixed
from forensics.trace.io import (
    ConvertResult,
    convert,
    format_for_output,
    iter_events,
    iter_raw,
    open_trace,
    open_writer,
    read_header,
    sniff,
    write_trace,
)
from forensics.trace.records import Event, RawEvent, TraceFormatError, TraceHeader, TraceOp, TraceStats
from forensics.trace.scenarios import Scenario
from forensics.trace.text import TextTraceReader, TextTraceWriter
from forensics.trace.validate import ObjectValidator

__all__ = [
    "BinaryTraceReader",
    "BinaryTraceWriter",
    "ConvertResult",
    "Event",
    "ObjectValidator",
    "RawEvent",
    "Scenario",
    "TextTraceReader",
    "TextTraceWriter",
    "TraceFormatError",
    "TraceHeader",
    "TraceOp",
    "TraceStats",
    "Workload",
    "convert",
    "format_for_output",
    "iter_events",
    "iter_raw",
    "larson",
    "open_trace",
    "open_writer",
    "random_mixed",
    "read_header",
    "sniff",
    "write_trace",
]
