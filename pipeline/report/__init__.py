"""Stage `report`: clinical HTML pages from files the earlier stages wrote.

    runs.py      find and read each evaluated run (metrics json, eval.npz, train.json, dataset json)
    tables.py    headline per-class numbers with bootstrap CIs, n/a reasons, failure modes
    compare.py   side-by-side tables (losses for ECG, transfer regimes for vision)
    figures.py   matplotlib figures as base64 PNG data URIs
    render.py    Jinja2 environment and page contexts
    stage.py     main(): params, build every page

Nothing here retrains or re-predicts; pages are self-contained (no network fetch).
"""
