"""Web crawls as a source (WARC and WET files the tests write from hand-made pages, read through `warc:` and the whole
cleaning pipeline), the URL filter, and the site-packages corpus on a fake site-packages tree."""

from __future__ import annotations

import gzip
import io
import sys

import pytest

from jaxllm.config import ConfigError
from jaxllm.config.clean import CleanConfig, UrlFilterConfig
from jaxllm.data.filters_url import url_filter
from jaxllm.data.pipeline import clean_corpus
from jaxllm.data.sources import SourceStats, check_sources, input_paths, iter_documents, site_packages_documents

warcio = pytest.importorskip("warcio")  # the web extra
pytest.importorskip("trafilatura")
from warcio.statusandheaders import StatusAndHeaders  # noqa: E402 (after the extra is known to be there)
from warcio.warcwriter import WARCWriter  # noqa: E402 (as above)

DATE = "2024-05-01T12:00:00Z"
REQUEST = b"GET /tides HTTP/1.1\r\nHost: www.oceans.example.org\r\n\r\n"
NAV = '<nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/contact">Contact</a></nav>'
FOOTER = "<footer>Copyright 2024 Example Ocean Blog. All rights reserved. Privacy policy | Terms of use</footer>"
ARTICLES = {
    "tides": (
        "How tides work",
        "The Moon pulls the oceans toward it, and the water on the far side of the Earth bulges away from it as "
        "well. Most coasts therefore see two high tides and two low tides every day.",
        "When the Sun and the Moon line up, their pulls add together and the tides are larger than usual. These are "
        "called spring tides, and they have nothing to do with the season of the year.",
        "Harbour masters publish tables of the times and heights of the tides. Sailors read them before they leave "
        "port, because a falling tide can strand a boat on a sandbank.",
    ),
    "bread": (
        "Baking bread at home",
        "Flour, water, salt and yeast are all that a plain loaf needs. The dough is kneaded until it is smooth and "
        "then left in a warm place to rise for about an hour.",
        "The yeast turns sugars in the flour into gas, and the gluten in the dough traps it. That is why a well "
        "kneaded dough rises more than one that was mixed in a hurry.",
        "A hot oven sets the crust quickly. Many bakers put a tray of water on the lowest shelf, so that the steam "
        "keeps the surface soft while the loaf grows.",
    ),
}
WET_TEXTS = {
    "volcanoes": "Volcanoes form where molten rock reaches the surface of the Earth. Most of them lie along the edges "
    "of tectonic plates, where one plate slides under another.\nThe ash of a large eruption can travel around the "
    "world and cool the climate for a year or two. Farmers far away have lost their harvests to it.\nGeologists "
    "watch the ground for small earthquakes and swelling, which often come before an eruption. These signs give "
    "the people nearby time to leave.",
    "bees": "Honey bees live in colonies of tens of thousands of workers and a single queen. The workers gather "
    "nectar and pollen from flowers within a few kilometres of the hive.\nA bee that finds a good patch of flowers "
    "tells the others with a dance on the comb. The angle of the dance points to the food, and its length tells "
    "the distance.\nThe nectar is stored in wax cells, where the bees fan it with their wings until most of the "
    "water has gone and it has become honey.",
}


def page(title: str, *paragraphs: str) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{NAV}"
        f"<article><h1>{title}</h1>{body}</article>{FOOTER}</body></html>"
    ).encode()


def response(writer, n, url, payload, status="200 OK", content_type="text/html; charset=utf-8"):
    http = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
    headers = {"WARC-Record-ID": f"<urn:uuid:0000-{n}>", "WARC-Date": DATE}
    return writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http,
                                     warc_headers_dict=headers)  # fmt: skip


def conversion(writer, n, url, text):
    headers = {"WARC-Record-ID": f"<urn:uuid:1111-{n}>", "WARC-Date": DATE}
    return writer.create_warc_record(url, "conversion", payload=io.BytesIO(text.encode()),
                                     warc_content_type="text/plain", warc_headers_dict=headers)  # fmt: skip


def write(path, make_records, gzipped=True):
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzipped)
        for record in make_records(writer):
            writer.write_record(record)


def warc_records(writer):
    yield writer.create_warcinfo_record("crawl.warc.gz", {"software": "tests"})  # not a document: passed over
    yield response(writer, 1, "https://www.oceans.example.org/tides", page(*ARTICLES["tides"]))
    yield writer.create_warc_record("https://www.oceans.example.org/tides", "request", payload=io.BytesIO(REQUEST))
    yield response(writer, 2, "https://cdn.pornhub.com/bread", page(*ARTICLES["bread"]))  # a blocked subdomain
    yield response(writer, 3, "https://www.oceans.example.org/gone", b"<html>not found</html>", "404 Not Found")
    yield response(writer, 4, "https://www.oceans.example.org/logo.png", b"\x89PNG", content_type="image/png")
    yield response(writer, 5, "https://www.oceans.example.org/blank", b"<html><body></body></html>")
    yield response(writer, 6, "https://bakery.example.com/bread", page(*ARTICLES["bread"]))


def wet_records(writer):
    yield conversion(writer, 1, "https://geo.example.net/volcanoes", WET_TEXTS["volcanoes"])
    yield conversion(writer, 2, "https://geo.example.net/empty", "  \n")
    yield conversion(writer, 3, "https://example.net/free-porn/bees", WET_TEXTS["bees"])  # a banned word
    yield conversion(writer, 4, "https://bees.example.net/hives", WET_TEXTS["bees"])


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    root = tmp_path_factory.mktemp("crawl")
    write(root / "a.warc.gz", warc_records)
    write(root / "b.warc.wet.gz", wet_records)
    write(root / "c.warc", lambda w: [response(w, 7, "https://plain.example.org/tides", page(*ARTICLES["tides"]))],
          gzipped=False)  # fmt: skip
    whole = (root / "a.warc.gz").read_bytes()
    (root / "d.warc.gz").write_bytes(whole[: len(whole) // 2])  # truncated midway: a corrupt file
    return root


def test_warc_and_wet_records_become_documents_with_url_and_date(crawl):
    stats = SourceStats()
    docs = list(iter_documents((f"warc:{crawl}/*.warc*",), stats))
    tides = "\n".join(ARTICLES["tides"])  # trafilatura keeps the heading and one line a paragraph
    bread = "\n".join(ARTICLES["bread"])
    assert [(d.id, d.text, d.kind, d.meta) for d in docs[:3]] == [
        (
            "warc/a.warc.gz#urn:uuid:0000-1",
            tides,
            "prose",
            (("url", "https://www.oceans.example.org/tides"), ("date", DATE)),
        ),
        ("warc/a.warc.gz#urn:uuid:0000-2", bread, "prose", (("url", "https://cdn.pornhub.com/bread"), ("date", DATE))),
        (
            "warc/a.warc.gz#urn:uuid:0000-6",
            bread,
            "prose",
            (("url", "https://bakery.example.com/bread"), ("date", DATE)),
        ),
    ]
    for boilerplate in ("Home", "About us", "Copyright", "Privacy policy"):
        assert boilerplate not in docs[0].text
    assert [(d.id, d.text, d.meta[0][1]) for d in docs[3:6]] == [
        ("warc/b.warc.wet.gz#urn:uuid:1111-1", WET_TEXTS["volcanoes"], "https://geo.example.net/volcanoes"),
        ("warc/b.warc.wet.gz#urn:uuid:1111-3", WET_TEXTS["bees"], "https://example.net/free-porn/bees"),
        ("warc/b.warc.wet.gz#urn:uuid:1111-4", WET_TEXTS["bees"], "https://bees.example.net/hives"),
    ]
    assert (docs[6].id, docs[6].text) == ("warc/c.warc#urn:uuid:0000-7", tides)
    # the truncated copy of a.warc.gz gives its first records, then is reported
    assert [d.id for d in docs[7:]] == ["warc/d.warc.gz#urn:uuid:0000-1"]
    assert (stats.files_read, stats.files_skipped, stats.records_skipped) == (4, 1, 4)
    assert stats.skipped_examples == [
        "a.warc.gz#urn:uuid:0000-3: HTTP status 404",
        "a.warc.gz#urn:uuid:0000-4: not HTML (image/png)",
        "a.warc.gz#urn:uuid:0000-5: no main text",
        "b.warc.wet.gz#urn:uuid:1111-2: empty",
        f"{crawl}/d.warc.gz: EOFError after 1 records: the file ends inside record urn:uuid:0000-2",
    ]


def test_crawl_through_the_cleaning_pipeline(crawl):
    stats = SourceStats()
    kept, report = clean_corpus(
        iter_documents((f"warc:{crawl}/[ab].warc*",), stats), CleanConfig(), workers=1, progress=False
    )
    assert [d.id for d in kept] == [
        "warc/a.warc.gz#urn:uuid:0000-1",
        "warc/a.warc.gz#urn:uuid:0000-6",
        "warc/b.warc.wet.gz#urn:uuid:1111-1",
        "warc/b.warc.wet.gz#urn:uuid:1111-4",
    ]
    meta = dict(kept[1].meta)  # the url and date the source found, and whatever later stages add
    assert (meta["url"], meta["date"]) == ("https://bakery.example.com/bread", DATE)
    removed = {rule: (c.docs, [e.split(":")[0] for e in c.examples]) for rule, c in report.rules.items()}
    assert removed == {
        "url/blocked_domain": (1, ["warc/a.warc.gz#urn"]),
        "url/banned_word": (1, ["warc/b.warc.wet.gz#urn"]),
    }
    assert (report.stages["url"].docs_in, report.stages["url"].docs_out) == (6, 4)
    assert (stats.files_read, stats.records_skipped) == (2, 4)


@pytest.mark.parametrize(
    "url, rule",
    [
        ("https://pornhub.com/view", "blocked_domain"),
        ("https://WWW.PornHub.com/view", "blocked_domain"),  # a subdomain, any case
        ("https://notpornhub.com/", "banned_subword"),  # not the domain, but the subword is in it
        ("https://xvideos.com.example.org/", "banned_subword"),
        ("https://example.com/porn/1", "banned_word"),
        ("example.com/XXX", "banned_word"),  # no scheme
        ("https://example.com/sexy-lingerie", "soft_banned_words"),
        ("https://example.com/sexy-cars", None),  # one soft word is not enough
        ("https://example.com/pornography-in-history", None),  # words are whole: 'porn' is not 'pornography'
        ("https://www.oceans.example.org/tides?id=3", None),
    ],
)
def test_url_filter_rules(url, rule):
    assert url_filter(url, UrlFilterConfig()) == rule


def test_url_filter_settings():
    cfg = UrlFilterConfig(blocked_domains=("example.org",), soft_word_threshold=0)
    assert url_filter("https://a.b.example.org/x", cfg) == "blocked_domain"
    assert url_filter("https://example.org.net/x", cfg) is None
    assert url_filter("https://example.com/sexy-lingerie", cfg) is None  # threshold 0: the soft rule is off


def test_bad_warc_sources(crawl, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no file matches"):
        check_sources((f"warc:{tmp_path}/*.warc.gz",))
    (tmp_path / "junk.warc.gz").write_bytes(gzip.compress(b"not a WARC record\n"))
    with pytest.raises(ConfigError, match=r"every input failed \(1 files"):
        list(iter_documents((f"warc:{tmp_path}/*.warc.gz",), SourceStats()))
    assert input_paths(f"warc:{crawl}/*.gz") == [crawl / "a.warc.gz", crawl / "b.warc.wet.gz", crawl / "d.warc.gz"]
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # as if the web extra were not installed
    with pytest.raises(
        ConfigError, match=r"needs the web extra \(trafilatura not installed\): pip install -e '.\[web\]'"
    ):
        check_sources((f"warc:{crawl}/*.gz",))


def test_site_packages_corpus(tmp_path):
    files = {
        "alpha/__init__.py": "x = 1\n",
        "alpha/README.md": "# Alpha\nA package.\n",
        "alpha/__pycache__/__init__.py": "cached\n",
        "alpha/data.bin": "binary\n",
        "alpha-1.0.dist-info/LICENSE.txt": "license\n",
        "beta.egg-info/top_level.txt": "beta\n",
        "beta/guide.rst": "Guide\n=====\n",
        "beta/vendor/site-packages/inner.py": "y = 2\n",
        "zeta.py": "z = 3\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "beta" / "broken.txt").write_bytes(b"\xff\xfe")
    stats = SourceStats()
    docs = [(d.id, d.text, d.kind, d.origin) for d in site_packages_documents(stats, root=tmp_path)]
    assert docs == [
        ("site-packages/alpha/README.md", "# Alpha\nA package.\n", "prose", "site-packages"),
        ("site-packages/alpha/__init__.py", "x = 1\n", "code", "site-packages"),
        ("site-packages/beta/guide.rst", "Guide\n=====\n", "prose", "site-packages"),
        ("site-packages/zeta.py", "z = 3\n", "code", "site-packages"),
    ]
    assert (stats.files_read, stats.files_skipped, stats.skipped_examples) == (
        4,
        1,
        ["beta/broken.txt: UnicodeDecodeError"],
    )
    # a cap of 25 bytes: README.md (19 bytes) leaves 6, __init__.py (6) uses them up, and reading stops
    capped = [d.id for d in site_packages_documents(SourceStats(), 25e-6, tmp_path)]
    assert capped == ["site-packages/alpha/README.md", "site-packages/alpha/__init__.py"]


@pytest.mark.parametrize("source", ["site-packages:abc", "site-packages:0", "site-packages:-5", "site-packages:nan"])
def test_site_packages_cap_must_be_a_positive_size(source):
    with pytest.raises(ConfigError, match=f"data source {source}: .* is not a size in megabytes"):
        check_sources((source,))
