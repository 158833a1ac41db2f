"""The CJK font every PDF of the gateway is set in, embedded as a subset.

Why embedded: a PDF that only *names* a CJK font (reportlab's CID font
``STSong-Light``) leaves the reader to find one; on a machine without Chinese
fonts the customer name, the fee names and the amount in words (大写) simply do
not show.  So the gateway ships its own font and puts the glyphs it uses into
each file (a subset: a one-page invoice grows by tens of kilobytes, not by the
whole font).

Which font: WenQuanYi Micro Hei (文泉驿微米黑, Apache License 2.0, embedding
allowed), from the PyPI package ``paperang-p2-fonts-cjk`` that the gateway's
install requires.  It covers all of GB2312 and more (34,000+ characters), and
its outlines are TrueType (``glyf``), which reportlab can subset and embed; the
Noto CJK OpenType fonts on PyPI are CFF-based, which reportlab cannot embed.
The font never comes from the machine's system fonts: what renders here renders
the same everywhere.

``cjk_font_name()`` registers the font with reportlab once (thread-safe; the
gateway renders PDFs from worker threads) and returns the name to use in styles
and ``canvas.setFont``; ``cjk_font_path()`` is the file, for matplotlib
(``FontProperties(fname=...)``).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

#: The PyPI package (distribution) that carries the font, and its import name.
FONT_PACKAGE = "paperang-p2-fonts-cjk"
_FONT_MODULE = "paperang_p2_fonts_cjk"
_FONT_FILE = "fonts/wqy-microhei.ttc"
#: The collection holds "WenQuanYi Micro Hei" (0) and its monospaced twin (1).
FONT_SUBFONT_INDEX = 0
#: The name the font is registered under with reportlab (and shows in pdffonts).
FONT_NAME = "WenQuanYiMicroHei"

_lock = threading.Lock()
_registered = False


class FontMissing(RuntimeError):
    """The font package is not installed (or its file is gone)."""


@lru_cache(maxsize=1)
def cjk_font_path() -> Path:
    """The font file (a TrueType collection; use face index 0).

    Raises :class:`FontMissing`, naming the package to install, when the
    package or its file is missing.
    """
    from importlib import resources

    hint = (f"the CJK font for PDFs is missing: install the Python package {FONT_PACKAGE!r}"
            f" (pip install {FONT_PACKAGE}; it is in bankgate's install_requires)")
    try:
        path = Path(str(resources.files(_FONT_MODULE).joinpath(_FONT_FILE)))
    except ModuleNotFoundError:
        raise FontMissing(hint) from None
    if not path.is_file():
        raise FontMissing(f"{hint}; expected the file {path}")
    return path


def cjk_font_name() -> str:
    """Register the embedded CJK font with reportlab (once) and return its name."""
    global _registered
    if _registered:
        return FONT_NAME
    with _lock:
        if not _registered:
            from reportlab.pdfbase import pdfmetrics
            from reportlab.pdfbase.ttfonts import TTFont

            try:
                pdfmetrics.getFont(FONT_NAME)
            except KeyError:
                # TTFont embeds a subset of the glyphs a document uses (never the whole font).
                pdfmetrics.registerFont(TTFont(FONT_NAME, str(cjk_font_path()),
                                               subfontIndex=FONT_SUBFONT_INDEX))
            _registered = True
    return FONT_NAME
