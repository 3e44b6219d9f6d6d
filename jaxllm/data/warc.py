"""Web crawls as text: the records of WARC and WET files (gzipped or not, as Common Crawl publishes them), read with
warcio, for the `warc:GLOB` source (sources.py makes them documents).

Which records count follows datatrove's WarcReader, the reader FineWeb used: WARC response records that hold an
HTML page, and WET conversion records (text the crawler already extracted). A page becomes its main text, extracted
with trafilatura with FineWeb's settings (datatrove's Trafilatura extractor: favor_precision, no comments), so
menus, footers and other boilerplate stay out; a conversion record is kept as it is. Each record gives its id, its
text, and as meta its URL (WARC-Target-URI) and crawl date (WARC-Date), which the URL filter and provenance use.

Records of other types (warcinfo, request, metadata) are not documents and pass silently. A response or conversion
record without usable text (an error status, not HTML, nothing extracted, not UTF-8) is a skipped record with its
reason; a file that cannot be read (not WARC, corrupt, truncated) is a skipped file, with the records read before
the failure kept. Not here: fetching crawls (give local files) and trafilatura's cross-document `deduplicate`
cache, which would make a page's text depend on the pages read before it (the dedup stages do that job).

warcio and trafilatura are the `web` extra, imported only when a crawl is read.
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
from typing import TYPE_CHECKING, Iterator

from jaxllm.config import ConfigError

if TYPE_CHECKING:
    from jaxllm.data.sources import SourceStats

HTML_TYPES = ("text/html", "application/xhtml+xml")


def require_web_extra(source: str) -> None:
    """Raises ConfigError naming the install command when warcio or trafilatura is missing."""
    missing = [name for name in ("warcio", "trafilatura") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"data source {source} needs the web extra ({', '.join(missing)} not installed): pip install -e '.[web]'"
        )


def _payload_type(record) -> str:
    """The payload's media type: the crawler's identification when it made one, else the HTTP Content-Type."""
    declared = record.rec_headers.get_header("WARC-Identified-Payload-Type")
    if not declared and record.http_headers is not None:
        declared = record.http_headers.get_header("Content-Type")
    return (declared or "").split(";")[0].strip().lower()


def _record_text(record, extract) -> tuple[str | None, str]:
    """(text, '') for a record with usable text, (None, why) for one without."""
    if record.rec_type == "conversion":
        try:
            text = record.content_stream().read().decode("utf-8")
        except UnicodeDecodeError:
            return None, "not UTF-8"
        return (text, "") if text.strip() else (None, "empty")
    status = record.http_headers.get_statuscode() if record.http_headers is not None else None
    if status != "200":
        return None, f"HTTP status {status}"
    media_type = _payload_type(record)
    if media_type not in HTML_TYPES:
        return None, f"not HTML ({media_type or 'no type'})"
    html = record.content_stream().read()
    try:
        text = extract(html, favor_precision=True, include_comments=False, deduplicate=False)
    except Exception as e:  # lxml and trafilatura raise their own types on pages they cannot parse
        return None, f"extraction failed: {type(e).__name__}"
    return (text, "") if text and text.strip() else (None, "no main text")


def _ends_early(record) -> bool:
    """Whether the file ends inside the record: warcio stops quietly at a truncated gzip member, so the record's
    declared length is what tells (its unread rest is read here, as the iterator would before the next record)."""
    while record.raw_stream.read(1 << 16):
        pass
    return record.raw_stream.limit > 0


def read_records(path: pathlib.Path, stats: SourceStats) -> Iterator[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(record id, text, (('url', ...), ('date', ...))) for every record with usable text, in file order."""
    from trafilatura import extract  # noqa: PLC0415 (optional extra)
    from warcio.archiveiterator import ArchiveIterator  # noqa: PLC0415 (optional extra)

    logging.getLogger("trafilatura").setLevel(logging.ERROR)  # a warning a page without text: the skips count them
    n = 0  # complete response and conversion records
    try:
        with open(path, "rb") as f:
            stats.files_read += 1
            for index, record in enumerate(ArchiveIterator(f)):
                record_id = (record.rec_headers.get_header("WARC-Record-ID") or f"record-{index}").strip("<>")
                is_document = record.rec_type in ("response", "conversion")
                text, why = _record_text(record, extract) if is_document else (None, "")
                if _ends_early(record):
                    raise EOFError(f"the file ends inside record {record_id}")
                if not is_document:
                    continue
                n += 1
                if text is None:
                    stats.skip_record(f"{path.name}#{record_id}", why)
                    continue
                meta = tuple(
                    (key, value)
                    for key, header in (("url", "WARC-Target-URI"), ("date", "WARC-Date"))
                    if (value := record.rec_headers.get_header(header))
                )
                yield record_id, text, meta
    except Exception as e:  # warcio, gzip and zlib each raise their own types for a corrupt file
        stats.skip(str(path), f"{type(e).__name__} after {n} records: {e}"[:160])
