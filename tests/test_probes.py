"""Readability probes through hfd_probe on a bed of mapped, unmapped and PROT_NONE pages.

The seed's two probes are pinned exactly as the seed wrote them, wrong answers included;
/proc/self/maps (kind 100) is the ground truth they are judged against.
"""

from __future__ import annotations

import pytest

from forensics import native
from forensics.model import ProbeKind

OFFSET = 40  # an unaligned address inside the page, as ptr - HEADER_SIZE usually is


@pytest.fixture()
def bed():
    """Three pages: [rw][unmapped][PROT_NONE] -> dict name -> page address."""
    with native.Pages() as pages:
        ps = pages.page_size
        base = pages.map(3)
        pages.unmap(base + ps, ps)
        pages.protect(base + 2 * ps, ps, native.PROT_NONE)
        yield {"mapped": base, "unmapped": base + ps, "protnone": base + 2 * ps, "page_size": ps}


# (page, aligned?) -> expected verdict per probe; 1 readable, 0 unreadable.
EXPECTED = {
    #                        maps  seed-mincore  seed-msync  mincore  safe
    ("mapped", True):       (1,    1,            1,          1,       1),
    ("mapped", False):      (1,    0,            0,          1,       1),
    ("unmapped", True):     (0,    0,            1,          0,       0),
    ("unmapped", False):    (0,    0,            0,          0,       0),
    ("protnone", True):     (0,    1,            1,          1,       0),
    ("protnone", False):    (0,    0,            0,          1,       0),
}
KINDS = ("maps", ProbeKind.SEED_MINCORE, ProbeKind.SEED_MSYNC, ProbeKind.MINCORE, ProbeKind.SAFE)


@pytest.mark.parametrize("page, aligned", list(EXPECTED), ids=lambda v: v if isinstance(v, str) else ("aligned" if v else "unaligned"))
def test_probe_matrix(driver, bed, page, aligned):
    addr = bed[page] + (0 if aligned else OFFSET)
    got = tuple(int(driver.probe(kind, addr, 32)) for kind in KINDS)
    assert got == EXPECTED[(page, aligned)], dict(zip(map(str, KINDS), got))


def test_seed_probes_are_wrong_exactly_where_the_analysis_says(driver, bed):
    """The seed's 'no false positives (mincore is reliable)' claim, measured: seed-msync calls
    an unmapped page readable (errno == ENOMEM branch) and seed-mincore a PROT_NONE page."""
    assert driver.probe("maps", bed["unmapped"], 1) is False
    assert driver.probe(ProbeKind.SEED_MSYNC, bed["unmapped"], 1) is True
    assert driver.probe("maps", bed["protnone"], 1) is False
    assert driver.probe(ProbeKind.SEED_MINCORE, bed["protnone"], 1) is True
    # and both call a perfectly readable, unaligned header unreadable
    assert driver.probe("maps", bed["mapped"] + OFFSET, 32) is True
    assert driver.probe(ProbeKind.SEED_MINCORE, bed["mapped"] + OFFSET, 32) is False
    assert driver.probe(ProbeKind.SEED_MSYNC, bed["mapped"] + OFFSET, 32) is False


def test_header_straddling_into_a_hole(driver, bed):
    """A 32-byte header that starts 8 bytes before an unmapped page is not readable; the
    corrected probes check every page it covers."""
    addr = bed["mapped"] + bed["page_size"] - 8
    assert driver.probe("maps", addr, 32) is False
    assert driver.probe(ProbeKind.MINCORE, addr, 32) is False
    assert driver.probe(ProbeKind.SAFE, addr, 32) is False
    assert driver.probe(ProbeKind.SAFE, addr, 8) is True
    assert driver.probe(ProbeKind.MINCORE, addr, 8) is True


def test_off_probe_always_says_readable(driver, bed):
    assert driver.probe(ProbeKind.OFF, bed["unmapped"], 32) is True


def test_unknown_probe_kind_is_an_error(driver, bed):
    from forensics.errors import InvalidValueError

    with pytest.raises(InvalidValueError) as exc:
        driver.probe(57, bed["mapped"], 1)
    assert exc.value.message


def test_probe_time_counts_something(driver, bed):
    ns, cycles = driver.probe_time(ProbeKind.SAFE, bed["mapped"], 32, 200)
    assert ns > 0
    assert cycles >= 0
