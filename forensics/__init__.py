"""hakmem-forensics: evidence for why a hakmem-style allocator's free() path crashes."""

__version__ = "0.1.0"
