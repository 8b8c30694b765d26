"""dashboard role of Cairn: the public, read-only web view of a run; imports protocol/ only.

    app.py         routes, thin handlers, middlewares, lifecycle (`make_app`)
    views.py       one data function per page; the HTML page and its /api twin both render it
    ledger.py      read-only SQL on the coordinator's ledger (cairn.protocol.ledger_schema)
    repository.py  the signed TUF release repository: current targets, keys, checked file paths
    releases.py    releases and landmark sets as shown (manifest metrics, Matryoshka, compatibility)
    live.py        optional live contribution records from the DHT (--dht-join)
    charts.py      server-side SVG line charts
    pages.py       Jinja2 templates (autoescaped), formatting, each page's charts
    security.py    security headers, body limit, bounded per-client rate limit
    metrics.py     the dashboard's own Prometheus metrics
    synthetic.py   a synthetic coordinator workdir for tests, screenshots and benchmarks
    cli.py         `cairn dashboard serve`

The JSON API is documented in cairn/dashboard/API.md.
"""
